"""optimize-augs: iterations per second of the batched loss (all M targets in one V_b pass)
against a per-domain loop of the same loss, on the same inputs, measured in one run.

    python benchmarks/optimize_augs.py                 # RN-tiny and a random RN50, on the CPU
    python benchmarks/optimize_augs.py --device cuda --rn50-crops 60

One iteration is what the stage does per step: V_a on the crops (no gradient), the loss of
the M targets, backward, an Adam step. Weights are random (no download); speed does not
depend on them. Each variant is timed after one warm-up iteration, alternating the two
variants so that a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from clipgap_cli.augmentation.objective import augmentation_loss, per_domain_loss
from clipgap_cli.clip.model import load_clip
from clipgap_cli.clip.split import v_a, visual_dims


def step(loss_fn, visual, crops, offsets, directions, optimizer) -> None:
    with torch.no_grad():
        features = v_a(visual, crops)
    loss = loss_fn(visual, features, offsets, directions)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure(model: str, crops: int, prompts: int, iters: int, device: str) -> tuple[float, float]:
    """Iterations per second, (batched, per-domain loop)."""
    torch.manual_seed(0)
    visual = copy.deepcopy(load_clip(model, None).visual).to(device).train()
    dims = visual_dims(visual)
    images = torch.randn(crops, 3, dims.image_size, dims.image_size, device=device)
    directions = torch.nn.functional.normalize(torch.randn(prompts, dims.embed_dim, device=device), dim=-1)
    shape = (prompts, dims.layer3_channels, dims.roi_size, dims.roi_size)
    variants = {}
    for name, loss_fn in (("batched", augmentation_loss), ("loop", per_domain_loss)):
        offsets = torch.zeros(shape, device=device, requires_grad=True)
        variants[name] = (loss_fn, offsets, torch.optim.Adam([offsets], lr=0.01))
    seconds = dict.fromkeys(variants, 0.0)
    for i in range(iters + 1):
        for name, (loss_fn, offsets, optimizer) in variants.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(loss_fn, visual, images, offsets, directions, optimizer)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i > 0:  # the first iteration warms up
                seconds[name] += time.perf_counter() - start
    return iters / seconds["batched"], iters / seconds["loop"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=15, help="M target prompts (the reference: 15)")
    parser.add_argument("--tiny-crops", type=int, default=60, help="crops per iteration for RN-tiny")
    parser.add_argument("--rn50-crops", type=int, default=8, help="crops per iteration for RN50")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per variant")
    args = parser.parse_args()
    print(f"device {args.device}, {args.prompts} target prompts, {torch.get_num_threads()} threads")
    print(f"{'model':8} {'crops':>5} {'batched it/s':>13} {'loop it/s':>10} {'speed-up':>9}")
    for model, crops in (("RN-tiny", args.tiny_crops), ("RN50", args.rn50_crops)):
        batched, loop = measure(model, crops, args.prompts, args.iters, args.device)
        print(f"{model:8} {crops:5d} {batched:13.3f} {loop:10.3f} {batched / loop:8.2f}x")


if __name__ == "__main__":
    main()
