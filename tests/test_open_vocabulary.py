"""Novel classes (the open-vocabulary protocol): the spec marks them, `train` never sees their
boxes and learns the base classes, `evaluate` scores every class with base / novel / all AP50."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error
from typer.testing import CliRunner

from clipgap_cli.artifacts import decode_tensor, load_text_embeddings
from clipgap_cli.cli import app
from clipgap_cli.data.spec import DataSpec, load_spec, mark_novel, write_spec
from clipgap_cli.errors import ClipgapError
from clipgap_cli.evaluation.metrics import Detections, GroundTruth, voc_ap50
from clipgap_cli.rundir import Run
from clipgap_cli.stages.evaluate import _base_novel, evaluate
from clipgap_cli.stages.export import export
from clipgap_cli.stages.train import Launch, compose_config, resolve_config, train

NOVEL = ("bike", "truck")
C4 = "tiny/faster-rcnn_clip-tiny_c4_synth_no-aug.py"
GRID = "tiny/gridclip_clip-tiny_fpn_synth.py"


@pytest.fixture
def novel_data(synth_data, tmp_path):
    """A copy of the small synthetic benchmark whose spec marks bike and truck as novel."""
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    write_spec(mark_novel(load_spec(data), NOVEL))
    return data


def test_the_spec_keeps_novel_classes_in_class_order_and_refuses_bad_ones(novel_data):
    spec = load_spec(novel_data)
    assert spec.novel_classes == NOVEL and "novel_classes" in json.loads(spec.path.read_text())
    assert spec.base_classes == ("bus", "car", "motor", "person", "rider")
    assert mark_novel(spec, ["truck", "bike"]).novel_classes == NOVEL  # class order, whatever was given
    for names, message in [
        (["tram"], "names 'tram', which is not in"),
        (["bike", "bike"], "more than once"),
        (list(spec.classes), "at least one base class"),
    ]:
        with pytest.raises(ClipgapError, match=message):
            mark_novel(spec, names)
    raw = json.loads(spec.path.read_text())
    spec.path.write_text(json.dumps(raw | {"novel_classes": "bike"}))
    with pytest.raises(ClipgapError, match='"novel_classes" must be a list of class names'):
        load_spec(novel_data)


def test_data_novel_marks_and_clears_in_one_line(novel_data):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "novel", str(novel_data), "person"])
    assert result.exit_code == 0, result.output
    assert "novel: person; base: bus, bike, car, motor, rider, truck" in result.stdout
    assert load_spec(novel_data).novel_classes == ("person",)
    result = runner.invoke(app, ["data", "novel", str(novel_data)])
    assert result.exit_code == 0 and "every class is a base class" in result.stdout
    assert "novel_classes" not in json.loads(load_spec(novel_data).path.read_text())
    assert_one_line_error(runner.invoke(app, ["data", "novel", str(novel_data), "tram"]), "'tram'")


def test_novel_boxes_never_reach_the_training_batch(tiny_run, novel_data):
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner

    register_all_modules(init_default_scope=True)

    cfg, record = compose_config(Run.open(tiny_run), resolve_config(C4), novel_data)
    spec = load_spec(novel_data)
    assert record["options"]["novel_classes"] == list(NOVEL)
    head = cfg.model.roi_head.bbox_head
    text = load_text_embeddings(tiny_run)
    base_rows = [text.class_names.index(c) for c in spec.base_classes]
    assert head.num_classes == len(spec.base_classes)
    assert torch.equal(decode_tensor(head.class_embeddings), text.classes[base_rows])

    loader = Runner.build_dataloader(
        cfg.train_dataloader | dict(sampler=dict(type="DefaultSampler", shuffle=False))
    )
    loaded, images = Counter(), set()
    for batch in loader:
        for sample in batch["data_samples"]:
            images.add(sample.img_id)
            loaded.update(spec.base_classes[label] for label in sample.gt_instances.labels.tolist())
    # Independently: the train json's boxes of base classes, on the images that hold one.
    coco = json.loads(spec.train_split.ann_file.read_text())
    name_of = {c["id"]: c["name"] for c in coco["categories"]}
    expected = Counter(name_of[a["category_id"]] for a in coco["annotations"] if a["image_id"] in images)
    assert not any(n in loaded for n in NOVEL) and any(expected[n] for n in NOVEL)
    assert loaded == Counter({n: k for n, k in expected.items() if n not in NOVEL})


def test_base_and_novel_ap50_equal_a_hand_computation(tmp_path):
    classes = ("bus", "car", "truck")
    spec = DataSpec(path=tmp_path / "spec.json", classes=classes, domains=(), novel_classes=("truck",))
    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 90, 90]], np.float32)
    empty = np.zeros((0, 4), np.float32)
    truth = {1: GroundTruth(boxes, np.array([0, 1, 2]), empty, np.zeros(0, np.int64))}
    # bus found, car missed (its box is elsewhere), truck found: per class 1, 0, 1.
    found = np.array([[0, 0, 10, 10], [60, 0, 80, 15], [50, 50, 90, 90]], np.float32)
    detections = {1: Detections(found, np.array([0.9, 0.8, 0.7], np.float32), np.array([0, 1, 2]))}
    scores = voc_ap50(detections, truth, classes)
    assert scores.per_class == {"bus": 1.0, "car": 0.0, "truck": 1.0}
    assert _base_novel(scores, spec) == {"base_mAP": 0.5, "novel_mAP": 1.0}
    assert scores.mean == pytest.approx(2 / 3)
    assert _base_novel(scores, DataSpec(path=spec.path, classes=classes, domains=())) == {}


@pytest.mark.parametrize(
    "config, options",
    [(C4, {}), (C4, {"model.roi_head.bbox_head.classifier": "linear"}), (GRID, {})],
    ids=["c4-text", "c4-linear", "gridclip"],
)
def test_a_detector_trained_on_base_classes_is_scored_on_every_class(
    tiny_run, novel_data, tmp_path, config, options
):
    train(tiny_run, resolve_config(config), novel_data, launch=Launch(device="cpu"), max_iters=2,
          cfg_options=options | {"train_cfg.val_interval": 2})  # fmt: skip
    report = evaluate(tiny_run, novel_data, checkpoint="last", device="cpu").report
    assert report["novel_classes"] == list(NOVEL)
    for scores in report["domains"].values():
        voc = scores["voc07"]
        assert set(voc["per_class"]) == set(load_spec(novel_data).classes)
        assert 0 <= voc["base_mAP"] <= 1 and 0 <= voc["novel_mAP"] <= 1
    bundle = tmp_path / "bundle"
    export(tiny_run, bundle, checkpoint="last")
    assert json.loads((bundle / "bundle.json").read_text())["classes"] == list(
        load_spec(novel_data).base_classes
    )


def test_the_linear_classifier_never_names_a_novel_class(tiny_run, novel_data):
    from clipgap_cli.artifacts import find_checkpoint, run_config, trained_classes
    from clipgap_cli.models.detectors import build_detector
    from clipgap_cli.stages.evaluate import _infer, _whole_vocabulary

    train(tiny_run, resolve_config(C4), novel_data, launch=Launch(device="cpu"), max_iters=2,
          cfg_options={"model.roi_head.bbox_head.classifier": "linear"})  # fmt: skip
    run, spec = Run.open(tiny_run), load_spec(novel_data)
    weights = find_checkpoint(run, "last")
    model, cfg = build_detector(run_config(run), weights.path, "cpu")
    model.roi_head.test_cfg.score_thr = 0.0  # every box it can give, to see every label it uses
    text = load_text_embeddings(run)
    labels = _whole_vocabulary(model, text, trained_classes(run, weights.rel, text.class_names))
    assert [spec.classes[i] for i in labels] == list(spec.base_classes)
    detections = _infer(model, cfg, spec.eval_split("daytime_clear"), spec.classes, None, labels)
    used = {spec.classes[k] for d in detections.values() for k in d.labels}
    assert used and not used & set(NOVEL)


@pytest.mark.timeout(900)
def test_the_open_vocabulary_benchmark_writes_its_table_and_resumes(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    command = [sys.executable, str(root / "benchmarks" / "open_vocabulary.py"), "--quick", "--seeds", "0",
               "--rows", "gridclip", "linear", "--jobs", "1",
               "--work", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((out / "open-vocabulary.json").read_text())
    assert payload["novel_classes"] == ["motor", "truck"]
    (data,) = (tmp_path / "work").glob("severity-*/data")
    assert list(payload["source_train_instances"]) == list(load_spec(data).classes)
    rows = payload["summary"]["rows"]
    assert set(rows) == {"gridclip", "linear"}
    for where in ("source", "targets"):
        for group in ("base", "novel", "all"):
            for row in rows.values():
                mean, std = row[f"{where} {group}"]
                assert (0 <= mean <= 100 or np.isnan(mean)) and (std == 0 or np.isnan(std))
    assert "agreement novel" in rows["gridclip"] and "agreement novel" not in rows["linear"]
    (cell,) = (tmp_path / "work").glob("severity-*/open-vocabulary/seed0/gridclip/result.json")
    report = json.loads(cell.read_text())
    assert report["novel_classes"] == ["motor", "truck"]
    assert "novel_mAP" in report["domains"]["night_rainy"]["voc07"]
    markdown = (out / "open-vocabulary.md").read_text()
    assert "Novel classes: motor, truck" in markdown
    assert "| GridCLIP (grid- and image-level alignment) |" in markdown
    assert (out / "open-vocabulary.png").read_bytes().startswith(b"\x89PNG")
    stamp = cell.stat().st_mtime_ns
    again = subprocess.run(command, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert cell.stat().st_mtime_ns == stamp and "2 of 2 cells were kept" in again.stdout
