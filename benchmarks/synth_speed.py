"""Speed of `clipgap data synth`, against the cost of only writing the same files.

    python benchmarks/synth_speed.py [--images-per-domain 200] [--size 256] [--seed 0]

Renders the benchmark into a temporary directory and prints images per second. The
baseline, measured in the same run, re-encodes the rendered JPEGs and rewrites the XML
files the way `synthesize` writes them (atomically), so the ratio says how much rendering
and conversion add to the file output that any generator pays.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from clipgap_cli.data.synth import DOMAINS, JPEG_QUALITY, VOC_DIR, synthesize
from clipgap_cli.io import atomic_write


def _rewrite(voc_root: Path, out: Path) -> float:
    """Seconds to write every JPEG and XML of `voc_root` again under `out`."""
    jpegs = sorted(voc_root.rglob("*.jpg"))
    images = [(p, Image.open(p).convert("RGB")) for p in jpegs]
    xmls = [(p, p.read_text()) for p in sorted(voc_root.rglob("*.xml"))]
    start = time.perf_counter()
    for path, image in images:
        target = out / path.relative_to(voc_root)
        atomic_write(
            target,
            lambda tmp, image=image: image.save(tmp, "JPEG", quality=JPEG_QUALITY, subsampling="4:2:0"),
        )
    for path, text in xmls:
        atomic_write(out / path.relative_to(voc_root), lambda tmp, text=text: tmp.write_text(text))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-domain", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images = args.images_per_domain * len(DOMAINS)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synthesize(
            Path(tmp) / "synth", seed=args.seed, images_per_domain=args.images_per_domain, size=args.size
        )
        elapsed = time.perf_counter() - start
        baseline = _rewrite(Path(tmp) / "synth" / VOC_DIR, Path(tmp) / "rewrite")
    print(f"synth: {images} images at {args.size} px in {elapsed:.1f} s, {images / elapsed:.1f} images/s")
    print(f"writing the same files alone: {baseline:.1f} s, {images / baseline:.1f} images/s")
    print(f"ratio synth / writing alone: {elapsed / baseline:.1f}x")


if __name__ == "__main__":
    main()
