"""A detector's inference in onnxruntime against PyTorch on the CPU, measured in one run.

    python benchmarks/onnx_speed.py                                   # GridCLIP, RN-tiny, 256 x 320
    python benchmarks/onnx_speed.py --detector c4                     # CLIP the Gap's C4 detector
    python benchmarks/onnx_speed.py --configs dwd --iters 5           # RN101, 600 x 1000

Builds the detector (`--detector gridclip` or `c4`) from clipgap's config (`--configs tiny`:
RN-tiny; `dwd`: RN101, the Diverse Weather configs) with random weights and class embeddings,
as `gridclip_speed.py` does, exports it with `clipgap export --format onnx`'s writer (which
also checks it in onnxruntime), and times one image at a time: PyTorch runs MMDetection's test
path (`model.test_step`: the data preprocessor, the network, the postprocessing with mmcv's
NMS; what a bundle runs), onnxruntime runs the graph (the same steps in one graph). Both use
the same number of threads (torch's), on the same random image, taking turns after one
warm-up each, so that a busy machine slows both alike. Prints images per second of each and
their ratio.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

import torch
from gridclip_speed import CONFIG_PAIRS, CONFIGS, detector  # beside this script
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.logging import MMLogger
from train_step import alternate  # beside this script

from clipgap_cli.models.onnx_model import INPUTS, session, write_onnx

DETECTORS = {"gridclip": "GridCLIP (FCOS)", "c4": "CLIP the Gap (C4 Faster R-CNN)"}


def inference_rates(detector_name: str, configs: str, iters: int, threads: int) -> dict[str, float]:
    """Images per second of the detector of `configs` on one random image, {"pytorch": ...,
    "onnxruntime": ...}: the median of `iters` runs each after a warm-up, the two taking turns."""
    c4, gridclip, clip, (height, width) = CONFIG_PAIRS[configs]
    config = c4 if detector_name == "c4" else gridclip
    torch.set_num_threads(threads)
    model = detector(config, clip, "cpu")
    image = torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(1))
    sample = DetDataSample(
        metainfo=dict(img_shape=(height, width), ori_shape=(height, width), scale_factor=(1.0, 1.0))
    )

    def pytorch():
        with torch.no_grad():
            return model.test_step(dict(inputs=[image], data_samples=[sample]))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        write_onnx(model, Config.fromfile(str(CONFIGS / config)), path, {"classes": list(range(7))})
        runtime = session(path, "cpu", threads=threads)
    feed = dict(zip(INPUTS, (image[[2, 1, 0]][None].float().numpy(), torch.ones(2).numpy()), strict=True))
    seconds = alternate({"pytorch": pytorch, "onnxruntime": lambda: runtime.run(None, feed)}, iters, "cpu")
    return {name: 1 / statistics.median(times) for name, times in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", choices=DETECTORS, default="gridclip")
    parser.add_argument("--configs", choices=CONFIG_PAIRS, default="tiny")
    parser.add_argument("--iters", type=int, default=20, help="timed images per runtime")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="for both runtimes")
    args = parser.parse_args()
    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    rate = inference_rates(args.detector, args.configs, args.iters, args.threads)
    _, _, clip, (height, width) = CONFIG_PAIRS[args.configs]
    print(f"{DETECTORS[args.detector]}, configs {args.configs} ({clip}): 1 image of {height} x {width}")
    print(f"{args.threads} threads for each runtime")
    print(f"{args.iters} images each after a warm-up, alternating, on the CPU")
    print(f"PyTorch (MMDetection's test path): {rate['pytorch']:.3g} images/s")
    print(f"onnxruntime (the exported graph): {rate['onnxruntime']:.3g} images/s")
    print(f"ratio onnxruntime / PyTorch: {rate['onnxruntime'] / rate['pytorch']:.2f}x")


if __name__ == "__main__":
    main()
