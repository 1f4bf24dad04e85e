"""Can the style form's objective recover a target domain's feature statistics from one
target embedding? A known answer on RN-synth: the target domain is the source with every
channel of CLIP's map at the stage scaled and shifted (a per-channel affine change), and the
"text" is the target crops' mean image embedding. The styles are fitted as `optimize-augs
--form style` fits them (Adam from the source's mean statistics, full batch here); the
script prints the loss and the fraction of the gap closed in channel means and stds.

    python benchmarks/style_identifiability.py   # a few minutes on two cores

docs/method.md ("What its objective can and cannot pin down") quotes its output.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from clipgap_cli.augmentation.feature_shift import channel_statistics, closed_fraction
    from clipgap_cli.augmentation.style import STAGES, embed_from, fit_styles, stage_features
    from clipgap_cli.clip.model import load_clip, normalize_pixels
    from clipgap_cli.data.synth import synthesize

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    torch.manual_seed(0)
    visual = load_clip("RN-synth", "synth").visual.eval()
    size = visual.image_size
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(Path(tmp), images_per_domain=32, size=256)
        files = sorted((Path(tmp) / "voc" / "daytime_clear" / "VOC2007" / "JPEGImages").glob("*.jpg"))
        pixels = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size))) for f in files])
    crops = normalize_pixels(torch.from_numpy(pixels).permute(0, 3, 1, 2).float())
    g = torch.Generator().manual_seed(0)
    print(f"{len(crops)} clear-day images; target: each channel scaled by U(0.5, 1.5) and shifted by "
          "N(0, 0.5 x its std)")  # fmt: skip
    print("| stage | channels C | 2C vs D | loss: start -> end | means closed | stds closed |")
    print("|---|---|---|---|---|---|")
    for stage in args.stages:
        with torch.no_grad():
            source = stage_features(visual, stage, crops)
            channels = source.shape[1]
            scale = torch.rand(channels, generator=g) + 0.5
            shift = torch.randn(channels, generator=g) * 0.5 * source.std(dim=(0, 2, 3))
            target = source * scale[:, None, None] + shift[:, None, None]
            embed = functools.partial(embed_from, visual, stage)
            text = F.normalize(F.normalize(embed(target), dim=-1).mean(0), dim=0)[None]
        means, stds, losses = fit_styles(embed, (source for _ in range(args.iters)), text, lr=args.lr)
        (s_mean, s_std), (t_mean, t_std) = channel_statistics(source), channel_statistics(target)
        closed_mean = closed_fraction(s_mean, t_mean, means[0])
        closed_std = closed_fraction(s_std, t_std, stds[0])
        print(f"| {stage} | {channels} | {2 * channels} vs {visual.output_dim} | {losses[0]:.3f} -> "
              f"{losses[-1]:.4f} | {closed_mean:+.2f} | {closed_std:+.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
