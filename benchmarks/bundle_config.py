"""Loading an exported bundle's config: class embeddings as `encode_tensor` text against nested lists.

    python benchmarks/bundle_config.py [--classes 1203] [--dim 512]

Writes two configs that differ only in how a (K, D) embedding matrix is written (LVIS v1 with
RN101 by default: 1203 x 512), the way `clipgap export` formats its config, and times
mmengine's `Config.fromfile` on each; prints the sizes, the seconds and their ratio.
"""

from __future__ import annotations

import argparse
import pprint
import tempfile
import time
from pathlib import Path

import torch
from mmengine.config import Config

from clipgap_cli.artifacts import decode_tensor, encode_tensor


def _load_seconds(path: Path) -> float:
    start = time.perf_counter()
    Config.fromfile(str(path))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    embeddings = torch.nn.functional.normalize(torch.randn(args.classes, args.dim), dim=-1)
    forms = {"encode_tensor": encode_tensor(embeddings), "nested lists": embeddings.tolist()}
    with tempfile.TemporaryDirectory() as tmp:
        seconds = {}
        for name, value in forms.items():
            path = Path(tmp) / f"{name.replace(' ', '_')}.py"
            text = pprint.pformat({"bbox_head": {"class_embeddings": value}}, width=110, compact=True)
            path.write_text(f"model = {text}\n")
            seconds[name] = _load_seconds(path)
            loaded = decode_tensor(Config.fromfile(str(path)).model.bbox_head.class_embeddings)
            exact = torch.equal(loaded, embeddings)
            size = path.stat().st_size / 1e6
            print(f"{name:>14}: {size:6.1f} MB, loads in {seconds[name]:6.2f} s, exact: {exact}")
    ratio = seconds["nested lists"] / seconds["encode_tensor"]
    print(f"({args.classes} x {args.dim}) nested lists / encode_tensor load time: {ratio:.0f}x")


if __name__ == "__main__":
    main()
