"""The GPU benchmark: CLIP the Gap's training speed and memory, GridCLIP's inference against it,
optimize-augs batched against its loop, and the reference schedule's projected wall time.

    python benchmarks/gpu.py                # on a CUDA GPU: prints a table, writes gpu-bench.json
    python benchmarks/gpu.py --dry-run      # what it would measure, on any machine

(1) Training: the CLIP the Gap RN101 config for the Diverse Weather Dataset (the reference's
detector and solver, batch 4, with the semantic augmentation), random weights and random
600 x 1000 images with 5 boxes each, in four variants, one after the other so that each
variant's peak memory is its own: fp32 and AMP (bf16, mmengine's AmpOptimWrapper), each with
the RoI head's attention pooling in its token-0 form (clipgap's default) and in open_clip's
all-token form (the reference's). Images per second from the median step after a warm-up;
peak memory as torch allocates it (weights, optimiser state and activations).
(2) Inference: GridCLIP against CLIP the Gap, both RN101 at 600 x 1000 (gridclip_speed.py).
(3) optimize-augs: RN101, 60 crops and 15 target prompts an iteration, batched against the
per-target loop (optimize_augs.py).
(4) The reference schedule (the config's iterations x batch) projected from each training
variant's rate.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import torch
from gridclip_speed import CONFIG_PAIRS, inference_rates  # beside this script
from mmcv.ops import get_compiling_cuda_version
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import MMLogger
from optimize_augs import measure as optimize_augs_rates
from train_step import alternate, batch, detector, train_step

CONFIG = (
    Path(__file__).resolve().parents[1]
    / "clipgap_cli"
    / "mmconfigs"
    / "clipgap"
    / "faster-rcnn_clip-rn101_c4_dwd.py"
)
IMAGE_SIZE = (600, 1000)
# (attention pooling in the RoI head, precision); the reference trains the second-last.
TRAIN_VARIANTS = [("token0", "fp32"), ("token0", "bf16"), ("all_tokens", "fp32"), ("all_tokens", "bf16")]
AUGS_MODEL, AUGS_CROPS, AUGS_PROMPTS = "RN101", 60, 15
GIB = 2**30


def training_config(form: str, precision: str) -> Config:
    cfg = Config.fromfile(str(CONFIG))
    cfg.model.roi_head.shared_head.attnpool_form = form
    if precision == "bf16":
        optimizer = cfg.optim_wrapper.optimizer
        cfg.optim_wrapper = dict(type="AmpOptimWrapper", dtype="bfloat16", optimizer=optimizer)
    return cfg


def train_rate(form: str, precision: str, steps: int) -> dict:
    """Images per second and peak memory of the config's training step, variant (form, precision)."""
    cfg = training_config(form, precision)
    n = cfg.train_dataloader.batch_size
    inputs, samples = batch(n, *IMAGE_SIZE, cfg.model.roi_head.bbox_head.num_classes, "cuda")
    torch.cuda.empty_cache()  # the previous variant's memory, freed when its call returned
    torch.cuda.reset_peak_memory_stats()
    model, optim_wrapper = detector(cfg, augment=True, device="cuda")

    def step() -> None:
        train_step(model, optim_wrapper, inputs, samples)

    (seconds,) = alternate({"step": step}, steps, "cuda").values()
    peak = torch.cuda.max_memory_allocated() / GIB
    step = statistics.median(seconds)
    iterations = cfg.train_cfg.max_iters
    return {
        "attnpool_form": form,
        "precision": precision,
        "step_ms": 1e3 * step,
        "images_per_s": n / step,
        "peak_memory_gib": peak,
        "projected_hours": iterations * step / 3600,
    }


def plan(args: argparse.Namespace) -> list[str]:
    cfg = Config.fromfile(str(CONFIG))
    n, iterations = cfg.train_dataloader.batch_size, cfg.train_cfg.max_iters
    clipgap, gridclip, clip, (height, width) = CONFIG_PAIRS["dwd"]
    size = f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}"
    lines = [f"(1) training, {CONFIG.relative_to(CONFIG.parents[2])}, batch {n} of {size}, random weights:"]
    for form, precision in TRAIN_VARIANTS:
        lines.append(
            f"    attnpool {form:10} {precision}: {args.steps} steps after a warm-up; images/s, peak memory"
        )
    lines += [
        f"(2) inference, {args.infer_images} images of {height}x{width}, {args.infer_iters} batches each:"
        f" {gridclip} against {clipgap} ({clip})",
        f"(3) optimize-augs, {AUGS_MODEL}, {AUGS_CROPS} crops, {AUGS_PROMPTS} target prompts:"
        f" batched against the per-target loop, {args.augs_iters} iterations each",
        f"(4) the reference schedule, {iterations} iterations x batch {n}: hours from each rate in (1)",
        f"writes {args.out}",
    ]
    return lines


def run(args: argparse.Namespace) -> dict:
    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights logs every tensor
    train = [train_rate(form, precision, args.steps) for form, precision in TRAIN_VARIANTS]
    inference = inference_rates("dwd", None, None, args.infer_images, args.infer_iters, "cuda")
    batched, loop = optimize_augs_rates(AUGS_MODEL, AUGS_CROPS, AUGS_PROMPTS, args.augs_iters, "cuda")
    cfg = Config.fromfile(str(CONFIG))
    return {
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": "{}.{}".format(*torch.cuda.get_device_capability()),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "mmcv_cuda": get_compiling_cuda_version(),
        "train": {
            "config": str(CONFIG.relative_to(CONFIG.parents[2])),
            "image_size": IMAGE_SIZE,
            "batch": cfg.train_dataloader.batch_size,
            "steps": args.steps,
            "variants": train,
        },
        "inference": {"images": args.infer_images, "batches": args.infer_iters, "images_per_s": inference},
        "optimize_augs": {
            "model": AUGS_MODEL,
            "crops": AUGS_CROPS,
            "prompts": AUGS_PROMPTS,
            "batched_it_per_s": batched,
            "loop_it_per_s": loop,
        },
        "reference_schedule": {
            "iterations": cfg.train_cfg.max_iters,
            "batch": cfg.train_dataloader.batch_size,
        },
    }


def table(results: dict) -> list[str]:
    train = results["train"]["variants"]
    reference = next(v for v in train if (v["attnpool_form"], v["precision"]) == ("all_tokens", "fp32"))
    schedule = results["reference_schedule"]
    lines = [
        f"{results['gpu']} (compute capability {results['compute_capability']}),"
        f" torch {results['torch']}, CUDA {results['cuda']}",
        f"training {results['train']['config']}, batch {results['train']['batch']}, 600x1000:",
        f"  {'attnpool':10} {'precision':9} {'ms/step':>8} {'images/s':>9} {'vs ref.':>8} {'peak GiB':>9}"
        f" {'hours for ' + str(schedule['iterations']) + ' it.':>18}",
    ]
    for v in train:
        lines.append(
            f"  {v['attnpool_form']:10} {v['precision']:9} {v['step_ms']:8.0f} {v['images_per_s']:9.2f}"
            f" {v['images_per_s'] / reference['images_per_s']:7.2f}x {v['peak_memory_gib']:9.1f}"
            f" {v['projected_hours']:18.1f}"
        )
    lines.append("  (vs ref.: against all_tokens fp32, the reference's form)")
    rates = results["inference"]["images_per_s"]
    lines.append(
        f"inference, {results['inference']['images']} images a batch:"
        f" CLIP the Gap {rates['clipgap']:.2f} images/s, GridCLIP {rates['gridclip']:.2f} images/s,"
        f" ratio {rates['gridclip'] / rates['clipgap']:.2f}x"
    )
    augs = results["optimize_augs"]
    lines.append(
        f"optimize-augs {augs['model']}, {augs['crops']} crops: batched {augs['batched_it_per_s']:.2f} it/s,"
        f" loop {augs['loop_it_per_s']:.2f} it/s,"
        f" speed-up {augs['batched_it_per_s'] / augs['loop_it_per_s']:.2f}x"
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print what it would measure, and stop")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per variant")
    parser.add_argument("--infer-images", type=int, default=4, help="images per inference batch")
    parser.add_argument("--infer-iters", type=int, default=10, help="timed inference batches per detector")
    parser.add_argument(
        "--augs-iters", type=int, default=5, help="timed optimize-augs iterations per variant"
    )
    parser.add_argument("--out", type=Path, default=Path("gpu-bench.json"), help="the JSON to write")
    args = parser.parse_args(argv)
    if args.dry_run:
        print("\n".join(plan(args)))
        return
    if not torch.cuda.is_available():
        sys.exit("error: benchmarks/gpu.py needs a CUDA GPU and torch sees none (--dry-run prints the plan)")
    if get_compiling_cuda_version() == "not available":
        sys.exit(
            "error: mmcv was built without CUDA ops: reinstall it with FORCE_CUDA=1 (README, GPU install)"
        )
    results = run(args)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(table(results)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
