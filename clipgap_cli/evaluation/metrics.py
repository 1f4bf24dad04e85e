"""VOC AP50 (MMDetection's `eval_map`, as `VOCMetric` calls it), COCO AP (pycocotools) and,
for LVIS-format data, LVIS AP with its rare / common / frequent split (the `lvis` package, as
MMDetection's `LVISMetric` calls it) on a split's json and a detector's predictions."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mmdet.evaluation.functional import eval_map
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from clipgap_cli.errors import ClipgapError

VOC_MODES = {"voc07": "11points", "voc": "area"}
"""clipgap's metric names and `eval_map`'s `eval_mode`: VOC2007 11-point AP, VOC2010+ area AP."""


@dataclass(frozen=True)
class Detections:
    """One image's predictions: `bboxes` (N, 4) x1 y1 x2 y2 in pixels, `scores` (N,), `labels`
    (N,) indices into the class list."""

    bboxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class GroundTruth:
    """One image's annotations as MMDetection's CocoDataset loads them: `bboxes` (G, 4) and
    `labels` (G,) of the scored instances, `bboxes_ignore` (I, 4) and `labels_ignore` (I,) of
    the ignored ones (`iscrowd`, which `data convert` writes for VOC's `difficult`)."""

    bboxes: np.ndarray
    labels: np.ndarray
    bboxes_ignore: np.ndarray
    labels_ignore: np.ndarray


@dataclass(frozen=True)
class Scores:
    """Per-class AP (None for a class without ground truth) and the mean over the others."""

    per_class: dict[str, float | None]
    mean: float


def load_coco(ann_file: Path) -> COCO:
    """A split's json in pycocotools; annotations without `iscrowd` (LVIS writes none) are not
    crowds, as COCOeval needs the key."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(str(ann_file))
    for ann in coco.anns.values():
        ann.setdefault("iscrowd", 0)
    return coco


def ground_truth(coco: COCO, classes: Sequence[str]) -> dict[int, GroundTruth]:
    """Every image of `coco` (those without objects too), keyed by image id.

    Labels follow `classes` by category name, as CocoDataset maps them; boxes smaller than a
    pixel and categories outside `classes` are dropped, as CocoDataset drops them.
    """
    label_of = {
        c["id"]: classes.index(c["name"]) for c in coco.loadCats(coco.getCatIds()) if c["name"] in classes
    }
    truth = {}
    for image_id in coco.getImgIds():
        kept: dict[bool, tuple[list, list]] = {False: ([], []), True: ([], [])}
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            x, y, w, h = ann["bbox"]
            if ann["category_id"] not in label_of or w < 1 or h < 1 or ann.get("area", w * h) <= 0:
                continue
            boxes, labels = kept[bool(ann.get("iscrowd", 0))]
            boxes.append([x, y, x + w, y + h])
            labels.append(label_of[ann["category_id"]])
        truth[image_id] = GroundTruth(*_boxes(*kept[False]), *_boxes(*kept[True]))
    return truth


def _boxes(boxes: list, labels: list) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def voc_ap50(
    detections: Mapping[int, Detections],
    truth: Mapping[int, GroundTruth],
    classes: Sequence[str],
    mode: str = "voc07",
) -> Scores:
    """AP at IoU 0.5 per class and its mean over the classes with ground truth, computed as
    VOCMetric does (`use_legacy_coordinate`: the VOC devkit's +1 pixel areas). An image
    without detections has none; detections of images not in `truth` are not scored."""
    image_ids = list(truth)
    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    det_results = []
    for image_id in image_ids:
        d = detections.get(image_id, empty)
        with_scores = np.hstack([d.bboxes.reshape(-1, 4), d.scores.reshape(-1, 1)]).astype(np.float32)
        det_results.append([with_scores[d.labels == k] for k in range(len(classes))])
    annotations = [vars(truth[image_id]) for image_id in image_ids]
    mean, results = eval_map(
        det_results,
        annotations,
        iou_thr=0.5,
        use_legacy_coordinate=True,
        logger="silent",
        eval_mode=VOC_MODES[mode],
    )
    per_class = {
        c: float(r["ap"]) if r["num_gts"] > 0 else None for c, r in zip(classes, results, strict=True)
    }
    return Scores(per_class, float(mean))


def _coco_results(detections: Mapping[int, Detections], cat_of: Mapping[str, int], classes: Sequence[str]):
    """Detections as COCO-style result dicts (boxes x y w h), the form pycocotools and lvis read."""
    return [
        {"image_id": image_id, "category_id": cat_of[classes[label]], "score": float(score),
         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]}
        for image_id, d in detections.items()
        for (x1, y1, x2, y2), score, label in zip(d.bboxes, d.scores, d.labels, strict=True)
    ]  # fmt: skip


def coco_ap(detections: Mapping[int, Detections], coco: COCO, classes: Sequence[str]) -> Scores:
    """COCO AP@[.5:.95] (pycocotools COCOeval, bbox, 100 detections an image) over the
    categories named in `classes`: per class and overall (`stats[0]`); 0 without detections."""
    cat_of = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    results = _coco_results(detections, cat_of, classes)
    has_truth = {c: bool(coco.getAnnIds(catIds=[cat_of[c]], iscrowd=False)) for c in classes if c in cat_of}
    if not results:
        return Scores({c: 0.0 if has_truth.get(c) else None for c in classes}, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.params.catIds = [cat_of[c] for c in classes if c in cat_of]  # as VOC: the classes only
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # precision: (IoU thresholds, recall points, categories, area ranges, max detections);
    # -1 marks a category without ground truth.
    precision = evaluator.eval["precision"]
    per_class = {}
    for c in classes:
        k = evaluator.params.catIds.index(cat_of[c]) if c in cat_of else None
        p = precision[:, :, k, 0, -1] if k is not None else np.array([-1.0])
        per_class[c] = float(p[p > -1].mean()) if (p > -1).any() else None
    return Scores(per_class, max(float(evaluator.stats[0]), 0.0))


LVIS_KEYS = ("AP", "AP50", "APr", "APc", "APf")
"""What `lvis_ap` reports: AP@[.5:.95], AP50, and AP over the rare, common and frequent classes."""
LVIS_MAX_DETS = 300  # detections an image, LVIS's protocol (and LVISMetric's default)


def is_lvis(coco: COCO) -> bool:
    """Whether a split's json is in LVIS format: every category has its `frequency` tag (r, c, f)."""
    categories = coco.loadCats(coco.getCatIds())
    return bool(categories) and all(c.get("frequency") in ("r", "c", "f") for c in categories)


def lvis_ap(detections: Mapping[int, Detections], ann_file: Path, classes: Sequence[str]) -> dict:
    """LVIS's federated AP (the `lvis` package's LVISEval, bbox, 300 detections an image) over
    the categories named in `classes`: `LVIS_KEYS`, None for a frequency group without
    categories; 0 without detections."""
    try:
        from lvis import LVIS, LVISEval, LVISResults
    except ImportError:
        raise ClipgapError(
            f"{ann_file} is LVIS-format data: its AP needs the lvis package (pip install 'clipgap[lvis]')"
        ) from None
    with contextlib.redirect_stdout(io.StringIO()), _numpy_float_alias():
        truth = LVIS(str(ann_file))
        cat_of = {c["name"]: c["id"] for c in truth.load_cats(None)}
        scored = [cat_of[c] for c in classes if c in cat_of]
        results = _coco_results(detections, cat_of, classes)
        if not results:
            with_truth = [c for c in truth.load_cats(scored) if truth.get_ann_ids(cat_ids=[c["id"]])]
            present = {c["frequency"] for c in with_truth}
            return {k: 0.0 if k in ("AP", "AP50") or k[-1] in present else None for k in LVIS_KEYS}
        evaluator = LVISEval(truth, LVISResults(truth, results, max_dets=LVIS_MAX_DETS), "bbox")
        evaluator.params.cat_ids = scored  # as for COCO: the classes only
        evaluator.run()
        stats = evaluator.get_results()
    return {k: None if stats[k] < 0 else float(stats[k]) for k in LVIS_KEYS}


@contextlib.contextmanager
def _numpy_float_alias():
    # lvis 0.5.3, its latest release, still uses `np.float`, which NumPy 1.24 removed:
    # LVISEval fails with "module 'numpy' has no attribute 'float'". The alias lives only
    # while lvis runs.
    missing = "float" not in vars(np)
    if missing:
        np.float = float
    try:
        yield
    finally:
        if missing:
            del np.float
