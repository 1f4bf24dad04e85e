"""Is the synthetic benchmark's domain shift real, and are its objects still learnable?

    python benchmarks/synth_shift.py [DATA]   # DATA: a `clipgap data synth` output; default:
                                              # render 5 x 200 images at 256 px first

A proxy that needs no detector: a small CNN classifies 32x32 crops of the ground-truth
boxes. Trained on the source's train list, it is scored on every domain's evaluation
split; the ratio target / source accuracy measures the shift. Trained on a target's own
train list and scored on its test list, it shows the objects stay learnable there. About
three minutes on two CPU cores.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clipgap_cli.data.spec import Split, load_spec
from clipgap_cli.data.synth import synthesize


def crops(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 32, 32) float crops of every box with 10% context, and (N,) class indices."""
    coco = json.loads(split.ann_file.read_text())
    files = {image["id"]: split.image_dir / image["file_name"] for image in coco["images"]}
    images: dict[int, Image.Image] = {}
    pixels, labels = [], []
    for ann in coco["annotations"]:
        if ann["image_id"] not in images:
            images[ann["image_id"]] = Image.open(files[ann["image_id"]]).convert("RGB")
        x, y, w, h = ann["bbox"]
        box = (x - 0.1 * w, y - 0.1 * h, x + 1.1 * w, y + 1.1 * h)
        crop = images[ann["image_id"]].crop(box).resize((32, 32), Image.Resampling.BILINEAR)
        pixels.append(np.asarray(crop, np.float32) / 255)
        labels.append(ann["category_id"] - 1)
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2), torch.tensor(labels)


def train(x: torch.Tensor, y: torch.Tensor, classes: int, epochs: int = 30) -> nn.Module:
    layers: list[nn.Module] = []
    for c_in, c_out in ((3, 32), (32, 64), (64, 128)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            inputs = x[batch].flip(3) if torch.rand(1) < 0.5 else x[batch]
            loss = F.cross_entropy(model(inputs), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    x, y = data
    return (model(x).argmax(1) == y).float().mean().item()


def main(data: Path) -> None:
    torch.manual_seed(0)
    spec = load_spec(data)
    source = train(*crops(spec.train_split), len(spec.classes))
    on_source = accuracy(source, crops(spec.eval_split(spec.source.name)))
    chance = 1 / len(spec.classes)
    print(f"source-trained crop accuracy on {spec.source.name}: {on_source:.3f} (chance {chance:.3f})")
    for domain in spec.targets:
        shifted = accuracy(source, crops(spec.eval_split(domain.name)))
        own = accuracy(train(*crops(domain.splits["train"]), len(spec.classes)), crops(domain.splits["test"]))
        print(
            f"{domain.name:14s} source-trained {shifted:.3f} (ratio to source {shifted / on_source:.2f}), "
            f"trained on {domain.name} itself {own:.3f}"
        )


if __name__ == "__main__":
    torch.set_num_threads(2)
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            synthesize(Path(tmp), seed=0, images_per_domain=200, size=256)
            main(Path(tmp))
