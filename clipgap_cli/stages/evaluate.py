"""Stage `evaluate`: the trained detector on each domain's evaluation split, scored with VOC AP50
per class (the papers' mAP), COCO AP and, on LVIS-format data, LVIS AP with APr/APc/APf; a json
and a chart in the run directory."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.config import Config

from clipgap_cli.artifacts import (
    find_checkpoint,
    load_text_embeddings,
    recorded_checkpoint,
    run_config,
    trained_classes,
)
from clipgap_cli.data.spec import load_run_dataset, set_dataset
from clipgap_cli.errors import ClipgapError
from clipgap_cli.evaluation.metrics import (
    VOC_MODES,
    Detections,
    coco_ap,
    ground_truth,
    is_lvis,
    load_coco,
    lvis_ap,
    voc_ap50,
)
from clipgap_cli.evaluation.report import write_chart
from clipgap_cli.models.detectors import build_detector
from clipgap_cli.rundir import EVAL_DIR, Run, writes_run

STAGE = "evaluate"
METRICS = (*VOC_MODES, "coco")
ALL = "all"

Progress = Callable[[str, int, int], None]
"""Called as `(domain, images done, images in the split)` during inference."""


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` wrote: the json's content and the paths of the json and the chart."""

    report: dict[str, Any]
    json_rel: str
    chart_rel: str


@writes_run(STAGE)
def evaluate(
    run_path: Path,
    data: Path | None,
    domain: str = ALL,
    *,
    checkpoint: str = "best",
    metric: str = "voc07",
    device: str = "cpu",
    on_progress: Progress | None = None,
) -> Evaluation:
    """Score the detector on `domain` (or every domain) and record `eval/<checkpoint>.json`
    and `eval/<checkpoint>.png`. A json of the same checkpoint keeps its other domains.
    `data` None means the dataset the checkpoint was trained on."""
    if metric not in METRICS:
        raise ClipgapError(f"--metric must be one of {', '.join(METRICS)}, not {metric!r}")
    run = Run.open(run_path)
    text = load_text_embeddings(run)
    spec = load_run_dataset(data, text.class_names) if data is not None else None
    weights = find_checkpoint(run, checkpoint)
    if spec is None:
        # The dataset the checkpoint was trained on, as its manifest entry records it.
        trained = run.artifact(weights.rel) if weights.rel else None
        if trained is None or "data" not in trained.options:
            raise ClipgapError(f"pass --data: {weights.path} records no dataset it was trained on")
        spec = load_run_dataset(Path(trained.options["data"]), text.class_names)
    domains = [d.name for d in spec.domains] if domain == ALL else [spec.domain(domain).name]
    model, cfg = build_detector(run_config(run), weights.path, device)
    labels = _whole_vocabulary(model, text, trained_classes(run, weights.rel, text.class_names))
    results = {}
    for name in domains:
        split = spec.eval_split(name)
        detections = _infer(
            model, cfg, split, spec.classes, partial(on_progress, name) if on_progress else None, labels
        )
        coco = load_coco(split.ann_file)
        truth = ground_truth(coco, spec.classes)
        voc = {mode: voc_ap50(detections, truth, spec.classes, mode) for mode in VOC_MODES}
        coco_scores = coco_ap(detections, coco, spec.classes)
        results[name] = {
            "role": spec.domain(name).role,
            "split": split.name,
            "images": len(truth),
            **{m: {"per_class": s.per_class, "mAP": s.mean} | _base_novel(s, spec) for m, s in voc.items()},
            "coco": {"per_class": coco_scores.per_class, "AP": coco_scores.mean},
        }
        if is_lvis(coco):
            results[name]["lvis"] = lvis_ap(detections, split.ann_file, spec.classes)

    json_rel, chart_rel = f"{EVAL_DIR}/{weights.stem}.json", f"{EVAL_DIR}/{weights.stem}.png"
    previous = _previous(run, json_rel, weights.sha256)
    report = {
        "checkpoint": weights.rel or str(weights.path.resolve()),
        "checkpoint_sha256": weights.sha256,
        "data": str(spec.path),
        "classes": list(spec.classes),
        **({"novel_classes": list(spec.novel_classes)} if spec.novel_classes else {}),
        "domains": {**previous, **results},
    }
    report["domains"] = {
        d.name: report["domains"][d.name] for d in spec.domains if d.name in report["domains"]
    }
    inputs = [weights.rel] if weights.rel else []
    options = {"checkpoint": report["checkpoint"], "data": str(spec.path), "domains": list(report["domains"])}
    text_out = json.dumps(report, indent=2) + "\n"
    run.write(json_rel, lambda tmp: tmp.write_text(text_out, encoding="utf-8"),
              stage=STAGE, options=options, inputs=inputs)  # fmt: skip
    run.write(chart_rel, lambda tmp: write_chart(tmp, report, metric),
              stage=STAGE, options={**options, "metric": metric}, inputs=inputs)  # fmt: skip
    return Evaluation(report, json_rel, chart_rel)


def stored_evaluation(run_path: Path, checkpoint: str = "best") -> dict[str, Any]:
    """The verified eval json of a run's checkpoint, as `evaluate` wrote it."""
    run = Run.open(run_path)
    # Only the checkpoint's name is needed here: the json it names is verified.
    rel = f"{EVAL_DIR}/{Path(recorded_checkpoint(run, checkpoint)).stem}.json"
    if run.artifact(rel) is None:
        raise ClipgapError(f"{run.root} has no {rel}; run `clipgap evaluate --run {run.root}` first")
    return json.loads(run.verified_path(rel).read_text(encoding="utf-8"))


def _previous(run: Run, json_rel: str, checkpoint_sha: str) -> dict[str, Any]:
    """The domains of an earlier evaluation of the same checkpoint, if its json is intact."""
    artifact = run.artifact(json_rel)
    if artifact is None or run.status(artifact) != "ok":
        return {}
    earlier = json.loads(run.path(json_rel).read_text(encoding="utf-8"))
    return earlier["domains"] if earlier.get("checkpoint_sha256") == checkpoint_sha else {}


def _whole_vocabulary(model: torch.nn.Module, text, trained: Sequence[str]) -> np.ndarray | None:
    """Make a detector trained on `trained`, the base classes, detect every class of the run.

    A text classifier takes the run's embeddings of all classes (`set_vocabulary`; a C4
    detector regresses a novel class's boxes as its nearest base class's); it returns None.
    A linear classifier cannot name the novel classes: it keeps its own, and the returned
    array maps its labels to the run's class indices."""
    if len(trained) == len(text.class_names):
        return None
    heads = [m for m in model.modules() if callable(getattr(m, "set_vocabulary", None))]
    try:
        for head in heads:
            head.set_vocabulary(text.classes)
    except ValueError:  # the linear classifier
        return np.array([text.class_names.index(c) for c in trained])
    return None


def _base_novel(scores, spec) -> dict[str, float | None]:
    """AP over the base and over the novel classes with ground truth (None without any), for a
    dataset with novel classes; nothing otherwise."""
    if not spec.novel_classes:
        return {}
    out = {}
    for group, classes in (("base", spec.base_classes), ("novel", spec.novel_classes)):
        values = [scores.per_class[c] for c in classes if scores.per_class[c] is not None]
        out[f"{group}_mAP"] = float(np.mean(values)) if values else None
    return out


def _infer(
    model,
    cfg: Config,
    split,
    classes: Sequence[str],
    on_progress: Callable[[int, int], None] | None,
    labels: np.ndarray | None = None,
) -> dict[int, Detections]:
    """The detector's predictions on every image of `split`, in original image pixels;
    `labels`, if given, maps the detector's labels to indices of `classes`."""
    from mmengine.runner import Runner

    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    set_dataset(loader_cfg.dataset, split, dict(classes=tuple(classes)))
    with contextlib.redirect_stdout(io.StringIO()):  # the dataset's pycocotools prints progress
        loader = Runner.build_dataloader(loader_cfg)
    total, done = len(loader.dataset), 0
    detections = {}
    with torch.no_grad():
        for batch in loader:
            for sample in model.test_step(batch):
                pred = sample.pred_instances
                predicted = pred.labels.cpu().numpy()
                detections[sample.metainfo["img_id"]] = Detections(
                    pred.bboxes.cpu().numpy(),
                    pred.scores.cpu().numpy(),
                    predicted if labels is None else labels[predicted],
                )
            done += len(batch["inputs"])
            if on_progress:
                on_progress(done, total)
    return detections
