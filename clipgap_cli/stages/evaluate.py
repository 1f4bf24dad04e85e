"""Stage `evaluate`: the trained detector on each domain's evaluation split, scored with VOC AP50
per class (the papers' mAP) and COCO AP; a json and a chart in the run directory."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config

from clipgap_cli.errors import ClipgapError
from clipgap_cli.evaluation.metrics import (
    VOC_MODES,
    Detections,
    coco_ap,
    ground_truth,
    load_coco,
    voc_ap50,
)
from clipgap_cli.evaluation.report import write_chart
from clipgap_cli.rundir import EVAL_DIR, WORK_DIR, Run, sha256_of
from clipgap_cli.stages.encode_prompts import load_text_embeddings
from clipgap_cli.stages.train import CONFIG_NAME, load_run_dataset, set_dataset
from clipgap_cli.stages.train import STAGE as TRAIN_STAGE

STAGE = "evaluate"
METRICS = (*VOC_MODES, "coco")
ALL = "all"

Progress = Callable[[str, int, int], None]
"""Called as `(domain, images done, images in the split)` during inference."""


@dataclass(frozen=True)
class Checkpoint:
    """The weights to evaluate: their path, their path in the run (None for a file outside it),
    their sha256, and the stem that names the evaluation's json and chart."""

    path: Path
    rel: str | None
    sha256: str

    @property
    def stem(self) -> str:
        return self.path.stem


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` wrote: the json's content and the paths of the json and the chart."""

    report: dict[str, Any]
    json_rel: str
    chart_rel: str


def find_checkpoint(run: Run, which: str) -> Checkpoint:
    """`best` (the best on the source's evaluation split), `last` (the highest iteration) or a
    path: a run's checkpoint is verified against the manifest, a file outside it taken as is."""
    if which in ("best", "last"):
        rel = _recorded_checkpoint(run, which)
    else:
        path = Path(which)
        if not path.is_file():
            raise ClipgapError(f"--checkpoint {which}: no such file; use best, last or a checkpoint file")
        resolved, root = path.resolve(), run.root.resolve()
        rel = resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else None
        if rel not in _recorded(run):
            return Checkpoint(path, None, sha256_of(path))
    return Checkpoint(run.path(rel), rel, run.verified(rel).sha256)


def _recorded(run: Run) -> list[str]:
    """The run's checkpoints, as `train` recorded them."""
    return sorted(
        rel for rel, a in run.artifacts().items() if a.stage == TRAIN_STAGE and rel.endswith(".pth")
    )


def _recorded_checkpoint(run: Run, which: str) -> str:
    """The manifest path of the run's `best` or `last` checkpoint (not yet verified)."""
    recorded = _recorded(run)
    if not recorded:
        raise ClipgapError(f"run directory {run.root} has no trained checkpoint; run `clipgap train` first")
    prefix = "best_" if which == "best" else "iter_"
    candidates = [rel for rel in recorded if Path(rel).name.startswith(prefix)]
    if not candidates:
        other = "last" if which == "best" else "best"
        raise ClipgapError(f"run directory {run.root} has no {which} checkpoint; pass --checkpoint {other}")
    return max(candidates, key=_iteration)


def _iteration(rel: str) -> int:
    match = re.search(r"iter_(\d+)\.pth$", rel)
    return int(match.group(1)) if match else -1


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
    spec = load_run_dataset(data, text) if data is not None else None
    weights = find_checkpoint(run, checkpoint)
    if spec is None:
        # The dataset the checkpoint was trained on, as its manifest entry records it.
        trained = run.artifact(weights.rel) if weights.rel else None
        if trained is None or "data" not in trained.options:
            raise ClipgapError(f"pass --data: {weights.path} records no dataset it was trained on")
        spec = load_run_dataset(Path(trained.options["data"]), text)
    domains = [d.name for d in spec.domains] if domain == ALL else [spec.domain(domain).name]
    model, cfg = build_detector(run_config(run), weights.path, device)
    results = {}
    for name in domains:
        split = spec.eval_split(name)
        detections = _infer(
            model, cfg, split, spec.classes, partial(on_progress, name) if on_progress else None
        )
        coco = load_coco(split.ann_file)
        truth = ground_truth(coco, spec.classes)
        voc = {mode: voc_ap50(detections, truth, spec.classes, mode) for mode in VOC_MODES}
        coco_scores = coco_ap(detections, coco, spec.classes)
        results[name] = {
            "role": spec.domain(name).role,
            "split": split.name,
            "images": len(truth),
            **{m: {"per_class": s.per_class, "mAP": s.mean} for m, s in voc.items()},
            "coco": {"per_class": coco_scores.per_class, "AP": coco_scores.mean},
        }

    json_rel, chart_rel = f"{EVAL_DIR}/{weights.stem}.json", f"{EVAL_DIR}/{weights.stem}.png"
    previous = _previous(run, json_rel, weights.sha256)
    report = {
        "checkpoint": weights.rel or str(weights.path.resolve()),
        "checkpoint_sha256": weights.sha256,
        "data": str(spec.path),
        "classes": list(spec.classes),
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
    rel = f"{EVAL_DIR}/{Path(_recorded_checkpoint(run, checkpoint)).stem}.json"
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


def run_config(run: Run) -> Path:
    """The config `train` composed for the run (`train/clipgap_config.py`)."""
    config_path = run.path(f"{WORK_DIR}/{CONFIG_NAME}")
    if not config_path.is_file():
        raise ClipgapError(f"{config_path} is missing; re-run `clipgap train` for this run directory")
    return config_path


def build_detector(config: Path | Config, checkpoint: Path, device: str):
    """The detector of a config (a file or loaded) with a checkpoint's weights, in eval mode;
    and the config."""
    from mmdet.apis import init_detector

    cfg = config if isinstance(config, Config) else Config.fromfile(str(config))
    try:
        # mmengine prints the checkpoint loader's name ("Loads checkpoint by ...") on stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            model = init_detector(cfg, str(checkpoint), device=device)
    # Many types, for a file that is not a checkpoint (unpickling) or not this detector's (shapes).
    except Exception as err:
        raise ClipgapError(
            f"cannot load checkpoint {checkpoint} into the detector of {cfg.filename}: "
            f"{type(err).__name__}: {err}"
        ) from None
    return model, cfg


def read_checkpoint(path: Path) -> dict[str, Any]:
    """An mmengine checkpoint file's content (`state_dict`, `meta`, ...), refused with one line
    if the file is not one."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # the user's own file
    except Exception as err:  # unpickling raises many types on a file that is not a checkpoint
        raise ClipgapError(f"{path} is not a checkpoint: {type(err).__name__}: {err}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ClipgapError(f"{path} is not an MMDetection checkpoint: it has no state_dict")
    return checkpoint


def _infer(
    model, cfg: Config, split, classes: Sequence[str], on_progress: Callable[[int, int], None] | None
) -> dict[int, Detections]:
    """The detector's predictions on every image of `split`, in original image pixels."""
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
                detections[sample.metainfo["img_id"]] = Detections(
                    pred.bboxes.cpu().numpy(), pred.scores.cpu().numpy(), pred.labels.cpu().numpy()
                )
            done += len(batch["inputs"])
            if on_progress:
                on_progress(done, total)
    return detections
