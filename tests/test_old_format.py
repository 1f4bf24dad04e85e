"""A checkpoint and a bundle in the format clipgap wrote before its text classifier was shared
by both heads (tests/old_format.py) still load, and predict the boxes they did then."""

import json
import shutil

import pytest
import torch
from mmengine.config import Config
from old_format import DETECTORS, FIXTURES, IMAGE, state_dict

from clipgap_cli.artifacts import BUNDLE_CONFIG, BUNDLE_INFO, BUNDLE_WEIGHTS, decode_tensor
from clipgap_cli.io import sha256_of
from clipgap_cli.models.detectors import build_detector
from clipgap_cli.rundir import Run
from clipgap_cli.stages.optimize_augs import optimize_augs
from clipgap_cli.stages.predict import predict
from clipgap_cli.stages.train import CONFIGS, compose_config


def old_checkpoint(detector: str, path) -> list[str]:
    """Write the old checkpoint of `detector` to `path`; returns its classes."""
    shapes = json.loads((FIXTURES / detector / "state_dict.json").read_text())
    model = Config.fromfile(str(FIXTURES / detector / "config.py")).model
    given = {}  # the class text embeddings and augmentation means, as the bundle's config holds them
    for name in shapes:
        if name.endswith(("class_embeddings", "offset_means")):
            part = model
            for key in name.split("."):
                part = part[key]
            given[name] = decode_tensor(part)
    classes = json.loads((FIXTURES / detector / "bundle.json").read_text())["classes"]
    meta = {"dataset_meta": {"classes": classes}}
    torch.save({"meta": meta, "state_dict": state_dict(shapes, given)}, path)
    return classes


def expected(detector: str, source: str) -> list[dict]:
    (detections,) = json.loads((FIXTURES / detector / "detections.json").read_text())[source]
    return detections


def assert_same_detections(found: list[dict], old: list[dict]) -> None:
    """Every old detection (the 20 best) is among the new ones: same class, score and box."""
    assert len(old) == 20 and len(found) >= len(old)
    for o in old:
        assert any(
            d["label_id"] == o["label_id"]
            and abs(d["score"] - o["score"]) < 1e-4
            and max(abs(a - b) for a, b in zip(d["bbox"], o["bbox"], strict=True)) < 1e-3
            for d in found
        ), o


@pytest.mark.parametrize("detector", DETECTORS)
def test_an_old_bundle_predicts_the_boxes_it_did(detector, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(FIXTURES / detector / "config.py", bundle / BUNDLE_CONFIG)
    old_checkpoint(detector, bundle / BUNDLE_WEIGHTS)
    info = json.loads((FIXTURES / detector / "bundle.json").read_text())
    info["files"] = {name: sha256_of(bundle / name) for name in info["files"]}  # the rebuilt weights'
    (bundle / BUNDLE_INFO).write_text(json.dumps(info))
    (prediction,) = predict(bundle, [FIXTURES / IMAGE], tmp_path / "out", score_thr=0.0)
    assert_same_detections(prediction.detections, expected(detector, "bundle"))


@pytest.mark.parametrize("detector", DETECTORS)
def test_an_old_checkpoint_loads_into_a_config_of_today_and_predicts_the_boxes_it_did(
    detector, tiny_run, synth_data, tmp_path
):
    from mmdet.apis import inference_detector

    config, score_thr = DETECTORS[detector]
    optimize_augs(tiny_run, synth_data, iters=1, crops_per_iter=2)
    cfg, _ = compose_config(Run.open(tiny_run), CONFIGS / config, synth_data, cfg_options={score_thr: 0.0})
    classes = old_checkpoint(detector, tmp_path / "old.pth")
    model, _ = build_detector(cfg, tmp_path / "old.pth", "cpu")
    with torch.no_grad():
        pred = inference_detector(model, str(FIXTURES / IMAGE)).pred_instances
    boxes, scores, labels = (getattr(pred, key).tolist() for key in ("bboxes", "scores", "labels"))
    found = [
        {"label": classes[label], "label_id": label, "score": score, "bbox": box}
        for box, score, label in zip(boxes, scores, labels, strict=True)
    ]
    assert_same_detections(found, expected(detector, "checkpoint"))
