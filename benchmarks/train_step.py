"""The detector's costs, measured in one run: (a) a training step with the semantic augmentation
against the same detector without it; (b) the RoI head's attention pooling from token 0
against open_clip's all-token attnpool.

    python benchmarks/train_step.py                        # tiny config, on the CPU
    python benchmarks/train_step.py --config clipgap_cli/mmconfigs/clipgap/faster-rcnn_clip-rn101_c4_dwd.py \\
        --image-size 600 1000 --device cuda

(a) builds the config twice from the same seed, once as it is and once with the neck removed,
and trains both on the same batch of random images with random boxes, alternating the two
variants (and their order) every iteration so that a busy machine slows both alike; it also
times the neck alone, applied to every batch, as the overhead's upper bound. (b) pools 512
RoIs of RN50 and RN101 size (layer4 output (512, 2048, 7, 7)). CLIP weights are random (no
download; speed does not depend on them); the run's artifacts are random stand-ins.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from collections.abc import Callable

import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.structures import InstanceData

import clipgap_cli  # noqa: F401  (the stack fixes)
from clipgap_cli.clip.model import load_clip
from clipgap_cli.clip.split import attnpool_token0

TINY = "clipgap_cli/mmconfigs/tiny/faster-rcnn_clip-tiny_c4_synth.py"
OFFSET_COUNT = 15  # M, the reference's number of target prompts


def timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def alternate(variants: dict[str, Callable[[], object]], iters: int, device: str) -> dict[str, list[float]]:
    """Seconds of each variant's `iters` runs after one warm-up run, the variants taking turns
    in alternating order, so that a busy machine slows them alike."""
    seconds = {name: [] for name in variants}
    for i in range(iters + 1):
        for name in list(variants)[:: 1 if i % 2 else -1]:
            elapsed = timed(variants[name], device)
            if i > 0:
                seconds[name].append(elapsed)
    return seconds


# -- (a) the training step -----------------------------------------------------------------


def detector(cfg: Config, augment: bool, device: str):
    """The config's detector with random stand-ins for the run's artifacts, and its optimiser."""
    cfg = copy.deepcopy(cfg)
    m = cfg.model
    for part in (m.backbone, m.roi_head.shared_head):
        part.clip = dict(name=part.clip["name"], pretrained=None)
    head = m.roi_head.bbox_head
    g = torch.Generator().manual_seed(0)
    head.class_embeddings = torch.randn(head.num_classes, head.embed_dim, generator=g).tolist()
    if augment:
        m.neck.offsets = None
        m.neck.offset_means = (0.1 * torch.randn(OFFSET_COUNT, m.rpn_head.in_channels, generator=g)).tolist()
    else:
        m.neck = None
    torch.manual_seed(0)
    model = MODELS.build(m).to(device)
    model.init_weights()
    model.train()
    return model, build_optim_wrapper(model, cfg.optim_wrapper)


def batch(n: int, height: int, width: int, classes: int, device: str):
    """n CLIP-normalised random images (n, 3, H, W) with 5 random boxes each."""
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(n, 3, height, width, generator=g).to(device)
    samples = []
    for _ in range(n):
        xy = torch.rand(5, 2, generator=g) * torch.tensor([width * 0.7, height * 0.7])
        wh = (0.1 + 0.2 * torch.rand(5, 2, generator=g)) * torch.tensor([width, height])
        sample = DetDataSample()
        shape = (height, width)
        sample.set_metainfo(dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape))
        labels = torch.randint(classes, (5,), generator=g)
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1).to(device), labels=labels.to(device)
        )
        samples.append(sample)
    return inputs, samples


def train_step(model, optim_wrapper, inputs, samples) -> None:
    """One training step as mmengine's `BaseModel.train_step` runs it: the forward pass in the
    optimiser wrapper's context (autocast, for an `AmpOptimWrapper`), backward, update."""
    with optim_wrapper.optim_context(model):
        losses = model.loss(inputs, samples)
    loss, _ = model.parse_losses(losses)
    optim_wrapper.update_params(loss)


def train_step_overhead(cfg: Config, image_size: tuple[int, int], iters: int, device: str) -> None:
    variants = {name: detector(cfg, name == "augmented", device) for name in ("augmented", "plain")}
    n = cfg.train_dataloader.batch_size
    inputs, samples = batch(n, *image_size, cfg.model.roi_head.bbox_head.num_classes, device)

    def step(name: str) -> None:
        train_step(*variants[name], inputs, samples)

    seconds = alternate({name: lambda name=name: step(name) for name in variants}, iters, device)
    aug, plain = (statistics.median(seconds[name]) for name in ("augmented", "plain"))
    ratios = [a / p for a, p in zip(seconds["augmented"], seconds["plain"], strict=True)]

    neck = variants["augmented"][0].neck
    prob, neck.prob = neck.prob, 1.0
    features = torch.randn(n, neck.offset_means.shape[1], image_size[0] // 16, image_size[1] // 16)
    features = features.to(device).requires_grad_(True)
    neck_seconds = statistics.median(
        timed(lambda: neck((features,))[0].sum().backward(), device) for _ in range(50)
    )
    neck.prob = prob

    size = f"{image_size[0]}x{image_size[1]}"
    print(f"(a) training step, {cfg.filename}, {n} images of {size}, {iters} steps each")
    print(f"    with augmentation  {aug * 1e3:9.1f} ms (median)")
    print(f"    without            {plain * 1e3:9.1f} ms (median)")
    print(f"    overhead           {100 * (aug / plain - 1):+9.2f} % (ratio of medians)")
    per_iteration = 100 * (statistics.median(ratios) - 1)
    print(f"                       {per_iteration:+9.2f} % (median of per-iteration ratios)")
    print(
        f"    the neck alone, applied to every batch (fwd+bwd): {100 * neck_seconds / plain:.3f} % of a step"
    )


# -- (b) attention pooling -----------------------------------------------------------------


def attnpool_speedup(rois: int, iters: int, device: str) -> None:
    print(f"(b) RoI attention pooling, {rois} RoIs of layer4 output, {iters} runs each (median)")
    print(f"    {'model':6} {'pass':13} {'open_clip':>10} {'token 0':>10} {'speed-up':>9} {'max |diff|':>11}")
    for name in ("RN50", "RN101"):
        attnpool = copy.deepcopy(load_clip(name, None).visual.attnpool).to(device).requires_grad_(True)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(rois, attnpool.k_proj.in_features, 7, 7, generator=g).to(device)
        pools = {"open_clip": attnpool, "token 0": lambda f, a=attnpool: attnpool_token0(a, f)}
        with torch.no_grad():
            diff = (pools["open_clip"](x) - pools["token 0"](x)).abs().max().item()
        x_grad = x.clone().requires_grad_(True)

        def forward(pool, x=x):
            with torch.no_grad():
                pool(x)

        def forward_backward(pool, x=x_grad):
            pool(x).sum().backward()

        passes = {"forward": forward, "forward+back": forward_backward}
        for pass_name, run in passes.items():
            seconds = alternate(
                {key: lambda pool=pool, run=run: run(pool) for key, pool in pools.items()}, iters, device
            )
            theirs, ours = (statistics.median(seconds[key]) for key in pools)
            print(
                f"    {name:6} {pass_name:13} {theirs * 1e3:8.0f}ms {ours * 1e3:8.0f}ms "
                f"{theirs / ours:8.1f}x {diff:11.1e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=TINY)
    parser.add_argument("--image-size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per variant")
    parser.add_argument("--rois", type=int, default=512, help="RoIs an image, the reference's 512")
    parser.add_argument("--pool-iters", type=int, default=3, help="timed attention poolings per variant")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights logs every tensor
    print(f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    train_step_overhead(Config.fromfile(args.config), tuple(args.image_size), args.steps, args.device)
    attnpool_speedup(args.rois, args.pool_iters, args.device)


if __name__ == "__main__":
    main()
