"""Inference speed of GridCLIP against the CLIP the Gap detector, measured in one run.

    python benchmarks/gridclip_speed.py                      # the tiny configs: RN-tiny, 256 x 320
    python benchmarks/gridclip_speed.py --configs dwd --images 1 --iters 3   # RN101, 600 x 1000
    python benchmarks/gridclip_speed.py --configs dwd --images 4 --device cuda

Builds both detectors from clipgap's configs, `--configs tiny` (RN-tiny; the C4 detector
keeps 100 proposals, GridCLIP has a 64-channel FPN and head) or `dwd` (the Diverse Weather
Dataset configs: RN101; 1000 proposals; 256 channels), with the same CLIP model (`--clip`
replaces it) and random weights (no download; speed does not depend on them), random
stand-ins for the class text embeddings, both without the semantic augmentation (the
identity at inference anyway). Both predict on the same batch of random images
(`model.predict`, eval mode, no gradient), taking turns in alternating order after one
warm-up each, so that a busy machine slows both alike. Prints images per second of each
and their ratio.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
from pathlib import Path

import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import MMLogger
from train_step import alternate  # beside this script

import clipgap_cli  # noqa: F401  (the stack fixes)
from clipgap_cli.clip.model import load_clip
from clipgap_cli.clip.split import visual_dims
from clipgap_cli.models.detectors import fill_model

CONFIGS = Path(__file__).resolve().parents[1] / "clipgap_cli" / "mmconfigs"
# (CLIP the Gap, GridCLIP, their CLIP model, the image size)
CONFIG_PAIRS = {
    "tiny": (
        "tiny/faster-rcnn_clip-tiny_c4_synth_no-aug.py",
        "tiny/gridclip_clip-tiny_fpn_synth.py",
        "RN-tiny",
        (256, 320),
    ),
    "dwd": (
        "clipgap/faster-rcnn_clip-rn101_c4_dwd_no-aug.py",
        "gridclip/gridclip_clip-rn101_fpn_dwd.py",
        "RN101",
        (600, 1000),
    ),
}
CLASSES = 7


def detector(config: str, clip: str, device: str):
    """The config's detector on CLIP `clip` with random weights, in eval mode on `device`."""
    cfg = Config.fromfile(str(CONFIGS / config))
    dims = visual_dims(load_clip(clip, None).visual)
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(CLASSES, dims.embed_dim, generator=g).tolist()
    fill_model(cfg.model, dict(name=clip, pretrained=None), dims, CLASSES, embeddings, offsets=None)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.to(device).eval()


def inference_rates(
    configs: str, clip: str | None, image_size: tuple[int, int] | None, images: int, iters: int, device: str
) -> dict[str, float]:
    """Images per second of `model.predict` on the pair `configs`, {"clipgap": ..., "gridclip": ...}:
    the median of `iters` batches of `images` each, after a warm-up, the two taking turns."""
    clipgap, gridclip, default_clip, default_size = CONFIG_PAIRS[configs]
    clip = clip or default_clip
    height, width = image_size or default_size
    batch = torch.randn(images, 3, height, width, generator=torch.Generator().manual_seed(1)).to(device)
    meta = dict(img_shape=(height, width), ori_shape=(height, width), batch_input_shape=(height, width))
    samples = [DetDataSample(metainfo=dict(meta, scale_factor=(1.0, 1.0))) for _ in range(images)]

    def predictor(config: str):
        model = detector(config, clip, device)

        def predict():
            with torch.no_grad():
                return model.predict(batch, copy.deepcopy(samples))

        return predict

    seconds = alternate({"clipgap": predictor(clipgap), "gridclip": predictor(gridclip)}, iters, device)
    return {name: images / statistics.median(times) for name, times in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", choices=CONFIG_PAIRS, default="tiny")
    parser.add_argument(
        "--clip", help="the CLIP model of both detectors (random weights); default: the configs'"
    )
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="default: the configs'")
    parser.add_argument("--images", type=int, default=2, help="images per batch")
    parser.add_argument("--iters", type=int, default=10, help="timed batches per detector")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    rate = inference_rates(args.configs, args.clip, args.image_size, args.images, args.iters, args.device)
    _, _, clip, (height, width) = CONFIG_PAIRS[args.configs]
    height, width = args.image_size or (height, width)
    print(f"configs {args.configs} ({args.clip or clip}): {args.images} images of {height} x {width} a batch")
    print(f"{args.iters} batches each after a warm-up, alternating, on {args.device}")
    print(f"CLIP the Gap (C4 Faster R-CNN): {rate['clipgap']:.2f} images/s")
    print(f"GridCLIP (FCOS): {rate['gridclip']:.2f} images/s")
    print(f"ratio GridCLIP / CLIP the Gap: {rate['gridclip'] / rate['clipgap']:.2f}x")


if __name__ == "__main__":
    main()
