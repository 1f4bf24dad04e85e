"""clipgap export and predict: a bundle that plain MMDetection runs with the run's detections,
predictions for the trained classes and for new class names, and bad input."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error
from typer.testing import CliRunner

from clipgap_cli.artifacts import BUNDLE_INFO as INFO
from clipgap_cli.artifacts import decode_tensor, encode_tensor, find_checkpoint, load_bundle, run_config
from clipgap_cli.cli import app
from clipgap_cli.clip.model import clip_identity
from clipgap_cli.models.detectors import build_detector
from clipgap_cli.rundir import TRAINED_CONFIG, Run
from clipgap_cli.stages.encode_prompts import encode_prompts
from clipgap_cli.stages.export import export
from clipgap_cli.stages.optimize_augs import optimize_augs
from clipgap_cli.stages.predict import predict
from clipgap_cli.stages.train import Launch, resolve_config, train

# Per detector: its tiny config (GridCLIP's with the semantic augmentation in its backbone) and
# its test score threshold, set to 0 so that every image has detections to compare, however
# weak the few-iteration model.
DETECTORS = {
    "clipgap": ("tiny/faster-rcnn_clip-tiny_c4_synth.py", "model.test_cfg.rcnn.score_thr"),
    "gridclip": ("tiny/gridclip_clip-tiny_fpn_synth_aug.py", "model.test_cfg.score_thr"),
}

# A fresh interpreter with only MMDetection's API: the bundle must need nothing else.
DET_INFERENCER = """
import json, sys
from mmdet.apis import DetInferencer
bundle, images = sys.argv[1], sys.argv[2:]
inferencer = DetInferencer(model=f"{bundle}/config.py", weights=f"{bundle}/model.pth", device="cpu",
                           show_progress=False)
out = inferencer(images, return_datasamples=True, no_save_vis=True)
print(json.dumps([{k: getattr(s.pred_instances, k).tolist() for k in ("bboxes", "scores", "labels")}
                  for s in out["predictions"]]))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_data):
    """`trained(detector)`: a run of that tiny detector, with semantic augmentation, after a
    few iterations, and its exported bundle; made once per module."""
    from clipgap_cli.clip.prompts import DEFAULT_PROMPTS_FILE, read_prompts

    made = {}

    def get(detector):
        if detector not in made:
            config, score_thr = DETECTORS[detector]
            root = tmp_path_factory.mktemp(f"export-{detector}")
            run = root / "run"
            encode_prompts(run, read_prompts(DEFAULT_PROMPTS_FILE), clip="RN-synth", pretrained="synth")
            optimize_augs(run, synth_data, iters=2, crops_per_iter=4)
            train(run, resolve_config(config), synth_data, launch=Launch(device="cpu"), max_iters=10,
                  cfg_options={score_thr: 0.0, "train_cfg.val_interval": 10})  # fmt: skip
            export(run, root / "bundle")
            made[detector] = run, root / "bundle"
        return made[detector]

    return get


@pytest.fixture
def trained_run(trained):
    return trained("clipgap")[0]


@pytest.fixture
def bundle(trained):
    return trained("clipgap")[1]


@pytest.fixture
def images(synth_data):
    return sorted((synth_data / "voc" / "night_rainy" / "VOC2007" / "JPEGImages").glob("*.jpg"))[:3]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.mark.parametrize("detector", DETECTORS)
def test_bundle_reproduces_the_run_in_plain_mmdetection(trained, detector, images):
    trained_run, bundle = trained(detector)
    config_text = (bundle / "config.py").read_text()
    assert str(trained_run.resolve()) not in config_text and ".pt'" not in config_text
    assert set(os.listdir(bundle)) == {"config.py", "model.pth", INFO, "README.md"}
    info = load_bundle(bundle).info
    assert info["classes"] == ["bus", "bike", "car", "motor", "person", "rider", "truck"]
    assert info["clip"] == clip_identity("RN-synth", "synth")  # the run's CLIP, weights included

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", DET_INFERENCER, str(bundle), *map(str, images)],
        capture_output=True, text=True, env=env, cwd=bundle.parent,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    exported = json.loads(proc.stdout.strip().splitlines()[-1])

    run = Run.open(trained_run)
    model, _ = build_detector(run_config(run), find_checkpoint(run, "best").path, "cpu")
    from mmdet.apis import inference_detector

    for image, theirs in zip(images, exported, strict=True):
        ours = inference_detector(model, str(image)).pred_instances
        assert len(ours) > 0
        np.testing.assert_allclose(theirs["bboxes"], ours.bboxes.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(theirs["scores"], ours.scores.numpy(), atol=1e-5, rtol=0)
        assert theirs["labels"] == ours.labels.tolist()


def test_tensors_in_a_config_read_back_bit_for_bit():
    values = torch.randn(7, 64) * torch.logspace(-30, 30, 64)  # tiny and huge magnitudes too
    encoded = encode_tensor(values)
    assert set(encoded) == {"float32_base64", "shape"} and encoded["shape"] == [7, 64]
    assert torch.equal(decode_tensor(encoded), values)
    assert torch.equal(decode_tensor(values.tolist()), values)
    with pytest.raises(ValueError, match="holds 448 values"):
        decode_tensor({**encoded, "shape": [7, 65]})


def test_export_never_overwrites_by_accident(trained_run, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(invoke("export", "--run", trained_run, "--out", out), "not empty", "--force")
    assert os.listdir(out) == ["notes.txt"]

    result = invoke("export", "--run", trained_run, "--out", out, "--force", "--checkpoint", "last")
    assert result.exit_code == 0, result.output
    assert "FasterRCNN" in result.stdout and "iter_10.pth" in result.stdout
    assert load_bundle(out).info["checkpoint"]["name"] == "iter_10.pth"
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no staging directory left behind


def test_export_of_an_untrained_run_is_refused(tiny_run, tmp_path):
    result = invoke("export", "--run", tiny_run, "--out", tmp_path / "model")
    assert_one_line_error(result, "no trained checkpoint", "clipgap train")
    assert not (tmp_path / "model").exists()


def test_export_of_a_file_that_is_no_checkpoint_is_refused(trained_run, tmp_path):
    fake = tmp_path / "weights.pth"
    fake.write_text("not weights")
    result = invoke("export", "--run", trained_run, "--out", tmp_path / "model", "--checkpoint", fake)
    assert_one_line_error(result, str(fake), "is not a checkpoint")
    assert sorted(os.listdir(tmp_path)) == ["weights.pth"]


def test_predict_draws_and_writes_json(bundle, images, tmp_path):
    out = tmp_path / "out"
    result = invoke("predict", bundle, *images, "--out", out, "--score-thr", "0")
    assert result.exit_code == 0, result.output
    for image in images:
        record = json.loads((out / f"{image.stem}.json").read_text())
        assert record["width"] == record["height"] == 128
        assert record["detections"], record
        assert {d["label"] for d in record["detections"]} <= set(record["classes"])
        first = record["detections"][0]
        assert record["classes"][first["label_id"]] == first["label"] and len(first["bbox"]) == 4
        assert (out / image.name).stat().st_size > 0
        assert image.name in result.stdout  # the table's row


@pytest.mark.parametrize("detector", DETECTORS)
def test_predict_with_new_class_names(trained, detector, images, tmp_path):
    trained_run, bundle = trained(detector)
    result = invoke("predict", bundle, *images, "--out", tmp_path / "new", "--classes", "car, tram,dog",
                    "--score-thr", "0")  # fmt: skip
    assert result.exit_code == 0, result.output
    labels = set()
    for image in images:
        record = json.loads((tmp_path / "new" / f"{image.stem}.json").read_text())
        assert record["classes"] == ["car", "tram", "dog"]
        assert all(d["label_id"] in (0, 1, 2) for d in record["detections"])
        labels |= {d["label"] for d in record["detections"]}
    assert labels and labels <= {"car", "tram", "dog"}

    # The trained names, re-encoded as new names, give the trained model's detections.
    trained = predict(trained_run, images, tmp_path / "trained", score_thr=0.0)
    renamed = predict(bundle, images, tmp_path / "renamed", score_thr=0.0,
                      classes=load_bundle(bundle).classes)  # fmt: skip
    for a, b in zip(trained, renamed, strict=True):
        assert [d["label"] for d in a.detections] == [d["label"] for d in b.detections]
        np.testing.assert_allclose([d["score"] for d in a.detections], [d["score"] for d in b.detections],
                                   atol=1e-5)  # fmt: skip


@pytest.mark.parametrize(
    "classes, message",
    [(",", "--classes is empty"), ("car,,bus", "empty class name"), ("car,car", "more than once")],
)
def test_bad_class_lists_are_refused(bundle, images, tmp_path, classes, message):
    result = invoke("predict", bundle, images[0], "--out", tmp_path / "out", "--classes", classes)
    assert_one_line_error(result, message)
    assert not (tmp_path / "out").exists()


def test_predict_refuses_what_is_not_an_image(bundle, images, tmp_path):
    fake = tmp_path / "photo.jpg"
    fake.write_text("not a picture")
    result = invoke("predict", bundle, images[0], fake, "--out", tmp_path / "out")
    assert_one_line_error(result, str(fake), "not an image")
    assert not (tmp_path / "out").exists()
    assert_one_line_error(invoke("predict", bundle, tmp_path / "missing.png", "--out", tmp_path / "o"),
                          "does not exist")  # fmt: skip
    result = invoke("predict", bundle, images[0], "--out", images[0].parent)
    assert_one_line_error(result, "holds the images themselves")


def test_predict_refuses_a_bundle_of_another_format_or_changed(bundle, images, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for name in os.listdir(bundle):
        (other / name).write_bytes((bundle / name).read_bytes())
    info = json.loads((other / INFO).read_text())
    (other / INFO).write_text(json.dumps({**info, "format": 99}))
    result = invoke("predict", other, images[0], "--out", tmp_path / "out")
    assert_one_line_error(result, "format 99", "export the model again")

    (other / INFO).write_text(json.dumps(info))
    with open(other / "config.py", "a") as f:
        f.write("\n# edited\n")
    assert_one_line_error(
        invoke("predict", other, images[0], "--out", tmp_path / "out"), "changed after export"
    )
    assert_one_line_error(invoke("predict", tmp_path, images[0], "--out", tmp_path / "out"),
                          "neither a clipgap bundle")  # fmt: skip


def test_an_edited_training_config_is_refused(trained_run, images, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with open(run / TRAINED_CONFIG, "a") as config:
        config.write("model = dict(test_cfg=dict(rcnn=dict(score_thr=0.9)))\n")
    refused = "clipgap_config.py does not match the sha256"
    assert_one_line_error(invoke("export", "--run", run, "--out", tmp_path / "b"), refused)
    assert_one_line_error(invoke("predict", run, images[0], "--out", tmp_path / "p"), refused)
