"""clipgap evaluate: the metric glue against mmdet's eval_map and pycocotools, the command end
to end on a tiny trained run, and bad input."""

import json
import shutil
import sys

import numpy as np
import pytest
from helpers import assert_one_line_error, lock_held
from mmdet.evaluation.functional import eval_map
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from clipgap_cli.cli import app
from clipgap_cli.evaluation.metrics import (
    LVIS_KEYS,
    Detections,
    coco_ap,
    ground_truth,
    is_lvis,
    load_coco,
    lvis_ap,
    voc_ap50,
)
from clipgap_cli.rundir import Run
from clipgap_cli.stages.encode_prompts import encode_prompts
from clipgap_cli.stages.optimize_augs import optimize_augs
from clipgap_cli.stages.train import Launch, resolve_config, train

CLASSES = ("bus", "bike", "car", "truck")
# Category ids neither 0-based nor in class order, and one category that is not a class.
CATEGORY_IDS = {"truck": 1, "car": 4, "bike": 7, "bus": 9, "tram": 2}
NO_TRUTH = "truck"  # a class without ground truth
TRAIN_ITERS = 10


def make_split(tmp_path, seed=0, images=12):
    """A COCO json with crowd (ignored) boxes, images without objects and a class without
    ground truth; detections near the truth and elsewhere. Returns the json path, the raw
    annotations per image id, and the detections."""
    rng = np.random.default_rng(seed)
    image_entries, annotations, raw, detections = [], [], {}, {}
    for image_id in range(101, 101 + images):
        image_entries.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 200, "height": 150})
        objects = [] if image_id % 4 == 0 else range(rng.integers(1, 6))
        raw[image_id] = []
        boxes, scores, labels = [], [], []
        for _ in objects:
            name = rng.choice(["bus", "bike", "car", "tram"])
            x, y = rng.uniform(0, 120, 2)
            w, h = rng.uniform(8, 70, 2)
            crowd = int(rng.random() < 0.2)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY_IDS[name],
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd,
            })  # fmt: skip
            raw[image_id].append((name, crowd, [x, y, x + w, y + h]))
            if name in CLASSES and rng.random() < 0.8:
                jitter = rng.normal(0, 4, 4)
                boxes.append([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]])
                scores.append(rng.uniform(0.3, 1))
                labels.append(CLASSES.index(name) if rng.random() < 0.85 else rng.integers(len(CLASSES)))
        for _ in range(rng.integers(0, 4)):  # false positives, some of the class without truth
            x, y = rng.uniform(0, 150, 2)
            boxes.append([x, y, x + rng.uniform(5, 50), y + rng.uniform(5, 50)])
            scores.append(rng.uniform(0, 0.9))
            labels.append(rng.integers(len(CLASSES)))
        detections[image_id] = Detections(
            np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), np.asarray(labels)
        )
    categories = [{"id": i, "name": n} for n, i in CATEGORY_IDS.items()]
    ann_file = tmp_path / "split.json"
    ann_file.write_text(
        json.dumps({"images": image_entries, "annotations": annotations, "categories": categories})
    )
    return ann_file, raw, detections


@pytest.mark.parametrize("mode, eval_mode", [("voc07", "11points"), ("voc", "area")])
def test_voc_ap50_equals_eval_map_on_the_same_boxes(tmp_path, mode, eval_mode):
    ann_file, raw, detections = make_split(tmp_path)
    scores = voc_ap50(detections, ground_truth(load_coco(ann_file), CLASSES), CLASSES, mode)

    det_results, annotations = [], []
    for image_id, objects in raw.items():
        d = detections[image_id]
        det_results.append(
            [np.c_[d.bboxes[d.labels == k], d.scores[d.labels == k]] for k in range(len(CLASSES))]
        )
        scored = [(CLASSES.index(n), box) for n, crowd, box in objects if n in CLASSES and not crowd]
        ignored = [(CLASSES.index(n), box) for n, crowd, box in objects if n in CLASSES and crowd]
        annotations.append({
            "bboxes": np.array([b for _, b in scored]).reshape(-1, 4),
            "labels": np.array([k for k, _ in scored], dtype=int),
            "bboxes_ignore": np.array([b for _, b in ignored]).reshape(-1, 4),
            "labels_ignore": np.array([k for k, _ in ignored], dtype=int),
        })  # fmt: skip
    assert any(not a["labels"].size for a in annotations) and any(
        a["labels_ignore"].size for a in annotations
    )
    mean, results = eval_map(
        det_results,
        annotations,
        iou_thr=0.5,
        eval_mode=eval_mode,
        use_legacy_coordinate=True,
        logger="silent",
    )
    for name, result in zip(CLASSES, results, strict=True):
        if name == NO_TRUTH:
            assert result["num_gts"] == 0 and scores.per_class[name] is None
        else:
            assert scores.per_class[name] == pytest.approx(result["ap"], abs=1e-6)
    assert 0 < scores.mean < 1 and scores.mean == pytest.approx(mean, abs=1e-6)


def test_coco_ap_equals_cocoeval(tmp_path):
    ann_file, _, detections = make_split(tmp_path, seed=1)
    coco = load_coco(ann_file)
    scores = coco_ap(detections, coco, CLASSES)

    results = [
        {"image_id": i, "category_id": CATEGORY_IDS[CLASSES[label]], "score": float(score),
         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]}
        for i, d in detections.items()
        for (x1, y1, x2, y2), score, label in zip(d.bboxes, d.scores, d.labels, strict=True)
    ]  # fmt: skip
    evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
    evaluator.params.catIds = [CATEGORY_IDS[c] for c in CLASSES]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert 0 < scores.mean < 1 and scores.mean == pytest.approx(evaluator.stats[0], abs=1e-6)
    assert scores.per_class[NO_TRUTH] is None
    per_class = [v for v in scores.per_class.values() if v is not None]
    assert np.mean(per_class) == pytest.approx(evaluator.stats[0], abs=1e-6)


def test_no_detections_score_zero(tmp_path):
    ann_file, _, _ = make_split(tmp_path)
    coco = load_coco(ann_file)
    assert voc_ap50({}, ground_truth(coco, CLASSES), CLASSES).mean == 0
    assert coco_ap({}, coco, CLASSES).mean == 0


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synth_data):
    """A run of the tiny detector trained for a few iterations on CPU; validation at the last
    one makes it also the best."""
    from clipgap_cli.clip.prompts import DEFAULT_PROMPTS_FILE, read_prompts

    run = tmp_path_factory.mktemp("evaluate") / "run"
    encode_prompts(run, read_prompts(DEFAULT_PROMPTS_FILE), clip="RN-synth", pretrained="synth")
    optimize_augs(run, synth_data, iters=2, crops_per_iter=4)
    train(run, resolve_config("tiny/faster-rcnn_clip-tiny_c4_synth.py"), synth_data,
          launch=Launch(device="cpu"), max_iters=TRAIN_ITERS)  # fmt: skip
    return run


def evaluate(run, data, *extra):
    """`clipgap evaluate` on the CPU, in a console wide enough for the whole table."""
    args = ["evaluate", "--run", str(run), "--data", str(data), "--device", "cpu", *extra]
    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


def test_evaluate_all_domains_prints_and_records(trained_run, synth_data):
    result = evaluate(trained_run, synth_data)
    assert result.exit_code == 0, result.output
    domains = ["daytime_clear", "night_sunny", "dusk_rainy", "night_rainy", "daytime_foggy"]
    assert "VOC07 11-point AP50" in result.output and "COCO AP" in result.output
    rows = [line.split() for line in result.output.splitlines() if line.split()]
    assert [row[0] for row in rows if row[0].rstrip("*") in domains] == ["daytime_clear*", *domains[1:]]
    assert all(len(row) == 1 + 7 + 2 for row in rows if row[0].rstrip("*") in domains), result.output
    run = Run.open(trained_run)
    (best,) = [rel for rel in run.artifacts() if rel.startswith("train/best_")]
    stem = best.removeprefix("train/").removesuffix(".pth")
    for rel in (f"eval/{stem}.json", f"eval/{stem}.png"):
        artifact = run.verified(rel)
        assert artifact.stage == "evaluate" and artifact.inputs == {best: run.artifact(best).sha256}
    assert run.path(f"eval/{stem}.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads(run.path(f"eval/{stem}.json").read_text())
    assert list(report["domains"]) == domains and report["checkpoint"] == best
    source = report["domains"]["daytime_clear"]
    assert (source["split"], source["images"]) == ("test", 3)
    assert (report["domains"]["night_rainy"]["split"], report["domains"]["night_rainy"]["images"]) == (
        "train",
        9,
    )
    assert set(source["voc07"]["per_class"]) == set(report["classes"])
    assert 0 <= source["voc07"]["mAP"] <= 1 and 0 <= source["coco"]["AP"] <= 1


def test_one_domain_at_a_time_adds_to_the_json_and_compares(trained_run, synth_data):
    last = f"train/iter_{TRAIN_ITERS}.pth"
    path = Run.open(trained_run).path(last)
    result = evaluate(trained_run, synth_data, "--checkpoint", str(path), "--domain", "night_rainy")
    assert result.exit_code == 0, result.output
    result = evaluate(
        trained_run, synth_data, "--checkpoint", "last", "--domain", "dusk_rainy",
        "--metric", "coco", "--compare", str(trained_run),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "COCO AP@[.5:.95]" in result.output and "mAP per domain" in result.output
    run = Run.open(trained_run)
    report = json.loads(run.verified_path(f"eval/iter_{TRAIN_ITERS}.json").read_text())
    assert report["checkpoint"] == last and list(report["domains"]) == ["dusk_rainy", "night_rainy"]
    assert run.artifact(f"eval/iter_{TRAIN_ITERS}.json").inputs == {last: run.artifact(last).sha256}


def test_unknown_domain_lists_the_valid_ones(trained_run, synth_data):
    result = evaluate(trained_run, synth_data, "--domain", "mars")
    assert_one_line_error(result, "no domain 'mars'", "daytime_clear, night_sunny")


def test_missing_checkpoints_are_refused(trained_run, tiny_run, synth_data, tmp_path):
    assert_one_line_error(
        evaluate(tiny_run, synth_data), "no trained checkpoint", "run `clipgap train` first"
    )
    copy = shutil.copytree(trained_run, tmp_path / "copy")
    Run.open(copy).forget([rel for rel in Run.open(copy).artifacts() if rel.startswith("train/best_")])
    assert_one_line_error(evaluate(copy, synth_data), "has no best checkpoint; pass --checkpoint last")
    absent = tmp_path / "absent.pth"
    result = evaluate(trained_run, synth_data, "--checkpoint", str(absent))
    assert_one_line_error(result, f"--checkpoint {absent}: no such file")


def test_dataset_with_other_classes_is_refused(tmp_path, synth_data):
    run = tmp_path / "run"
    encode_prompts(
        run, ["an image taken at night"], class_names=["car", "bus"], clip="RN-tiny", pretrained=None
    )
    result = evaluate(run, synth_data)
    assert_one_line_error(result, "the dataset's classes", "differ from the run's class text embeddings")


def test_data_defaults_to_the_dataset_the_checkpoint_was_trained_on(trained_run):
    args = ["evaluate", "--run", str(trained_run), "--device", "cpu", "--domain", "daytime_clear"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "daytime_clear*" in result.output


def test_runs_that_are_only_read_are_read_while_another_stage_writes_them(trained_run, synth_data, tmp_path):
    other = shutil.copytree(trained_run, tmp_path / "other")
    assert evaluate(other, synth_data, "--domain", "daytime_clear").exit_code == 0
    image = next(synth_data.rglob("*.jpg"))
    with lock_held(other, "train"):
        compared = evaluate(trained_run, synth_data, "--domain", "daytime_clear", "--compare", str(other))
        args = ["predict", str(other), str(image), "--out", str(tmp_path / "out"), "--device", "cpu"]
        predicted = CliRunner().invoke(app, args)
        refused = evaluate(other, synth_data, "--domain", "daytime_clear")
    assert compared.exit_code == 0, compared.output
    assert str(other) in compared.stdout
    assert predicted.exit_code == 0, predicted.output
    assert (tmp_path / "out" / f"{image.stem}.json").is_file()
    assert_one_line_error(refused, f"{other} is in use by train")


# LVIS-format data: the synthetic renders' jsons with LVIS's fields, each class tagged rare,
# common or frequent, and every class absent from an image listed as verified absent.
FREQUENCY = {"bike": "r", "motor": "r", "bus": "c", "truck": "c", "car": "f", "person": "f", "rider": "f"}


def to_lvis(ann_file, frequency=FREQUENCY):
    """Rewrite a COCO json of synthetic renders in LVIS format, in place."""
    data = json.loads(ann_file.read_text())
    present = {}
    for ann in data["annotations"]:
        present.setdefault(ann["image_id"], set()).add(ann["category_id"])
        ann.pop("iscrowd", None)
    for category in data["categories"]:
        category["frequency"] = frequency[category["name"]]
    every = {c["id"] for c in data["categories"]}
    for image in data["images"]:
        image["neg_category_ids"] = sorted(every - present.get(image["id"], set()))
        image["not_exhaustive_category_ids"] = []
    ann_file.write_text(json.dumps(data))


def test_lvis_ap_scores_the_federated_protocol_by_frequency(synth_data, tmp_path):
    from clipgap_cli.data.spec import load_spec

    split = load_spec(synth_data).eval_split("night_rainy")
    ann_file = tmp_path / "lvis.json"
    shutil.copy(split.ann_file, ann_file)
    to_lvis(ann_file)
    classes = tuple(FREQUENCY)
    coco = load_coco(ann_file)
    assert is_lvis(coco) and not is_lvis(load_coco(split.ann_file))
    cat_name = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}

    def detections(keep=lambda name: True, extra=None):
        out = {}
        for image_id in coco.getImgIds():
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            anns = [a for a in anns if keep(cat_name[a["category_id"]])]
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
            labels = [classes.index(cat_name[a["category_id"]]) for a in anns]
            if extra and extra.get(image_id):
                boxes.append([0, 0, 30, 30])
                labels.append(classes.index(extra[image_id]))
            boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
            out[image_id] = Detections(boxes, np.ones(len(boxes), np.float32), np.asarray(labels))
        return out

    assert lvis_ap(detections(), ann_file, classes) == {k: 1.0 for k in LVIS_KEYS}
    rare_missed = lvis_ap(detections(keep=lambda name: FREQUENCY[name] != "r"), ann_file, classes)
    assert rare_missed["APr"] == 0 and rare_missed["APc"] == rare_missed["APf"] == 1
    assert rare_missed["AP"] == pytest.approx(1 - 2 / 7, abs=1e-6)  # the mean over the 7 classes
    # Federated: a box of a class verified absent from its image is a false positive (it
    # outscores nothing here, all scores being 1: ranked after the true ones, it lowers AP a
    # little); a class neither present nor verified absent is not scored on that image.
    absent = {i: next((n for n in classes if coco.getCatIds(catNms=[n])[0] in img["neg_category_ids"]), None)
              for i, img in coco.imgs.items()}  # fmt: skip
    assert any(absent.values())
    assert lvis_ap(detections(extra=absent), ann_file, classes)["AP"] < 1
    data = json.loads(ann_file.read_text())
    for image in data["images"]:
        image["not_exhaustive_category_ids"], image["neg_category_ids"] = [], []
    ann_file.write_text(json.dumps(data))
    assert lvis_ap(detections(extra=absent), ann_file, classes)["AP"] == 1
    empty = lvis_ap({}, ann_file, classes)
    assert empty["AP"] == empty["AP50"] == 0 and all(empty[k] in (0, None) for k in ("APr", "APc", "APf"))


def test_evaluate_reports_lvis_ap_on_lvis_format_data(trained_run, synth_data, tmp_path):
    data = shutil.copytree(synth_data, tmp_path / "lvis-data")
    for ann_file in (data / "annotations").glob("*.json"):
        to_lvis(ann_file)
    result = evaluate(trained_run, data, "--domain", "night_rainy")
    assert result.exit_code == 0, result.output
    assert "LVIS AP (%)" in result.output and "APr" in result.output
    run = Run.open(trained_run)
    (report,) = [json.loads(run.path(r).read_text()) for r in run.artifacts() if r.startswith("eval/best_")
                 and r.endswith(".json")]  # fmt: skip
    scores = report["domains"]["night_rainy"]["lvis"]
    assert set(scores) == set(LVIS_KEYS) and all(v is None or 0 <= v <= 1 for v in scores.values())


def test_lvis_format_data_without_the_lvis_package_is_one_line(
    trained_run, synth_data, tmp_path, monkeypatch
):
    data = shutil.copytree(synth_data, tmp_path / "lvis-data")
    for ann_file in (data / "annotations").glob("*.json"):
        to_lvis(ann_file)
    monkeypatch.setitem(sys.modules, "lvis", None)  # import lvis raises ImportError
    result = evaluate(trained_run, data, "--domain", "night_rainy")
    assert_one_line_error(result, "is LVIS-format data", "pip install 'clipgap[lvis]'")
