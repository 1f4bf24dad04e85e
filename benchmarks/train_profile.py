"""Where a CPU training iteration of each tiny RN-synth detector spends its time, measured in one
run: data loading, the data preprocessor, the backbone, the detection heads' losses (the RPN
with its anchor assigner and sampler, the RoI head; or GridCLIP's dense head and its image
alignment), backward with the optimiser step; and validation, per image, at batch 1 (today's
default) against a batch of 8 with the same predictions.

    python benchmarks/train_profile.py                    # 256 px, 30 iterations a detector
    python benchmarks/train_profile.py --size 160 --iters 10

It renders a small synthetic benchmark and a run with RN-synth's text embeddings in a
temporary directory, composes each detector's config as `clipgap train` does, and times
the parts with wrappers around the detector's own methods (forward only: backward is one
graph, timed whole). Shares are of the mean iteration; the first iteration is a warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = "backbone (and neck)"
DETECTORS = {
    "C4 Faster R-CNN (clip-t)": "tiny/faster-rcnn_clip-synth_c4.py",
    "GridCLIP": "tiny/gridclip_clip-synth_fpn.py",
}


class Timers:
    """Seconds spent in wrapped callables, summed per name since the last `reset`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner, method: str, name: str) -> None:
        inner = getattr(owner, method)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        setattr(owner, method, timed)

    def reset(self) -> dict[str, float]:
        taken, self.seconds = dict(self.seconds), defaultdict(float)
        return taken


def prepare(work: Path, size: int) -> tuple[Path, Path]:
    """A synthetic benchmark (40 images a domain at `size` px) and a run with RN-synth's text
    embeddings of its classes."""
    from clipgap_cli.clip.prompts import DEFAULT_PROMPTS_FILE, read_prompts
    from clipgap_cli.data.synth import synthesize
    from clipgap_cli.stages.encode_prompts import encode_prompts

    data, run = work / "data", work / "run"
    synthesize(data, images_per_domain=40, size=size)
    encode_prompts(run, read_prompts(DEFAULT_PROMPTS_FILE), clip="RN-synth", pretrained="synth")
    return data, run


def runner_for(run: Path, data: Path, config: str, work: Path):
    from mmengine.runner import Runner

    from clipgap_cli.rundir import Run
    from clipgap_cli.stages.train import compose_config, resolve_config

    cfg, _ = compose_config(Run.open(run), resolve_config(config), data)
    cfg.work_dir = str(work / Path(config).stem)
    cfg.log_level = "WARNING"
    return Runner.from_cfg(cfg), cfg


def profile_training(runner, cfg, iters: int) -> dict[str, float]:
    """Mean seconds per iteration of each part, over `iters` iterations after a warm-up."""
    model = runner.model
    model.train()
    optim_wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
    loader = runner.build_dataloader(cfg.train_dataloader)
    timers = Timers()
    timed = [(model.data_preprocessor, "forward", "data preprocessor"), (model.backbone, "forward", BACKBONE)]
    if getattr(model, "neck", None) is not None:
        timed.append((model.neck, "forward", BACKBONE))
    if hasattr(model, "rpn_head"):
        timed += [
            (model.rpn_head, "loss_and_predict", "RPN: head, anchor assigner, sampler, proposals"),
            (model.roi_head, "loss", "RoI head: sampler, RoIAlign, layer4, classifier"),
        ]
    else:
        timed += [
            (model.bbox_head, "loss", "dense head: FCOS targets and losses"),
            (model, "alignment_loss", "image-level alignment (CLIP teacher)"),
        ]
    for owner, method, name in timed:
        timers.wrap(owner, method, name)
    parts = ["data loading", *dict.fromkeys(name for _, _, name in timed)]
    timers.wrap(model, "loss", "forward")
    batches = iter(loader)
    totals: dict[str, list[float]] = defaultdict(list)
    for i in range(iters + 1):
        start = time.perf_counter()
        try:
            data = next(batches)
        except StopIteration:
            batches = iter(loader)
            data = next(batches)
        loaded = time.perf_counter()
        model.train_step(data, optim_wrapper)
        end = time.perf_counter()
        taken = timers.reset()
        if i == 0:
            continue
        taken["data loading"] = loaded - start
        taken["backward and optimiser step"] = (end - loaded) - taken["forward"] - taken["data preprocessor"]
        taken["iteration"] = end - start
        for name, seconds in taken.items():
            totals[name].append(seconds)
    mean = {name: statistics.fmean(v) for name, v in totals.items()}
    measured = parts + ["backward and optimiser step"]
    forward_parts = sum(mean.get(p, 0.0) for p in parts[2:])
    # What the forward pass spends outside the named parts (losses' bookkeeping, the neck's
    # augmentation, the RoI extraction glue) is reported as such.
    mean["other forward"] = mean["forward"] - forward_parts
    return {name: mean.get(name, 0.0) for name in [*measured, "other forward", "iteration"]}


def profile_validation(runner, cfg, batch_sizes: tuple[int, ...] = (1, 8)) -> dict[int, float]:
    """Seconds per source test image of validation at each batch size; the predictions must agree."""
    model = runner.model
    model.eval()
    seconds, predictions = {}, {}
    for batch_size in batch_sizes:
        loader_cfg = cfg.val_dataloader.copy()
        loader_cfg["batch_size"] = batch_size
        loader = runner.build_dataloader(loader_cfg)
        outputs, start, images = [], time.perf_counter(), 0
        with torch.no_grad():
            for data in loader:
                for sample in model.val_step(data):
                    outputs.append(sample.pred_instances)
                images += len(data["inputs"])
        seconds[batch_size] = (time.perf_counter() - start) / images
        predictions[batch_size] = outputs
    reference = predictions[batch_sizes[0]]
    for batch_size in batch_sizes[1:]:
        for a, b in zip(reference, predictions[batch_size], strict=True):
            if len(a.bboxes) != len(b.bboxes) or not torch.allclose(a.bboxes, b.bboxes, atol=1e-3):
                raise SystemExit(f"validation at batch {batch_size} predicts other boxes than at batch 1")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image size of the rendered benchmark")
    parser.add_argument("--iters", type=int, default=30, help="timed training iterations a detector")
    args = parser.parse_args()
    import clipgap_cli  # noqa: F401  (the stack fixes)

    torch.manual_seed(0)
    logging.getLogger("mmengine").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, run = prepare(work, args.size)
        for label, config in DETECTORS.items():
            with contextlib.redirect_stdout(None):
                runner, cfg = runner_for(run, data, config, work)
            parts = profile_training(runner, cfg, args.iters)
            val = profile_validation(runner, cfg)
            total = parts["iteration"]
            print(f"\n{label} ({config}, {args.size} px, batch {cfg.train_dataloader.batch_size}, "
                  f"{torch.get_num_threads()} threads): {total * 1000:.0f} ms an iteration")  # fmt: skip
            print("| part | ms | share |\n|---|---|---|")
            for name, seconds in parts.items():
                if name != "iteration":
                    print(f"| {name} | {seconds * 1000:.1f} | {100 * seconds / total:.0f} % |")
            print(f"validation: {val[1] * 1000:.0f} ms an image at batch 1, {val[8] * 1000:.0f} ms "
                  f"at batch 8 (x{val[1] / val[8]:.2f}, same boxes)")  # fmt: skip


if __name__ == "__main__":
    main()
