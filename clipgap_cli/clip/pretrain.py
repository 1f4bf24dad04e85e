"""Pretraining RN-synth: CLIP's contrastive objective on the synthetic world's captioned renders.

The recipe of OpenAI's CLIP at CPU scale: an open_clip ModifiedResNet and text transformer,
the open_clip tokenizer, a symmetric InfoNCE loss with a learned temperature, AdamW with a
linear warm-up and a cosine decay. Identical captions in a batch ("a photo of a car" comes up often)
share the target probability instead of counting as each other's negatives. Images get a
random resized crop and a horizontal flip each time they are drawn, and one of their
candidate captions (`data.synth.corpus`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from clipgap_cli.clip.model import new_model, normalize_pixels
from clipgap_cli.clip.prompts import tokenize
from clipgap_cli.clip.split import visual_dims
from clipgap_cli.data.synth.corpus import render_corpus
from clipgap_cli.errors import ClipgapError
from clipgap_cli.rundir import atomic_write, sha256_of


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the weights, with the shipped RN-synth's values as defaults."""

    model: str = "RN-synth"
    seed: int = 0
    scenes: int = 1000  # planned scenes, each shown under `looks_per_scene` conditions
    looks_per_scene: int = 4
    full_strength: float = 0.25  # the share of showings at full strength (severity 1)
    min_severity: float = 0.25  # the others' strength is drawn uniformly from [min_severity, 1]
    crops_per_image: int = 2  # object crops per rendered image: one with context, one tight
    render_size: int = 192  # scenes are rendered at this size, then resized to the CLIP input
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3  # the peak, after the warm-up
    warmup: float = 0.1  # fraction of the steps spent warming up
    weight_decay: float = 0.1  # on weight matrices and convolutions only
    min_crop: float = 0.7  # random resized crops keep at least this fraction of the side
    # Both towers under CPU bfloat16 autocast, the loss in float32: 1.7x faster on CPUs with bf16
    # instructions (AVX512-BF16, AMX), many times slower on those without (AVX2 only), which
    # emulate it; float32 by default, so the recipe runs at its speed on any CPU.
    bf16: bool = False


@dataclass
class PretrainResult:
    """What `pretrain` made: the weights file, its sha256, the loss curve, and the wall time."""

    path: Path
    sha256: str
    samples: int
    losses: list[float] = field(default_factory=list)  # mean loss per logged window
    render_seconds: float = 0.0
    train_seconds: float = 0.0


Progress = Callable[[str, int, int, float | None], None]
"""Called as `progress(phase, done, total, loss)`: phase "render" or "train"."""


def pretrain(out: Path, recipe: Recipe = Recipe(), progress: Progress | None = None) -> PretrainResult:
    """Train CLIP `recipe.model` from random weights and write its state_dict to `out` (atomically),
    with the recipe, loss curve and timings in `out` with the suffix `.json`."""
    _check(recipe)
    out = Path(out)
    if out.exists() and out.is_dir():
        raise ClipgapError(f"{out} is a directory; give the weights file to write, e.g. {out}/RN-synth.pt")
    torch.manual_seed(recipe.seed)
    model = new_model(recipe.model)
    image_size = visual_dims(model.visual).image_size

    start = time.perf_counter()
    samples = render_corpus(
        seed=recipe.seed,
        scenes=recipe.scenes,
        looks_per_scene=recipe.looks_per_scene,
        render_size=recipe.render_size,
        image_size=image_size,
        crops_per_image=recipe.crops_per_image,
        min_severity=recipe.min_severity,
        full_strength=recipe.full_strength,
        progress=progress and (lambda done, total: progress("render", done, total, None)),
    )
    images = torch.from_numpy(np.stack([s.pixels for s in samples])).permute(0, 3, 1, 2).contiguous()
    captions = sorted({c for s in samples for c in s.captions})
    caption_index = {c: i for i, c in enumerate(captions)}
    tokens = tokenize(recipe.model, captions)  # (U, L)
    candidates = [torch.tensor([caption_index[c] for c in s.captions]) for s in samples]
    render_seconds = time.perf_counter() - start

    start = time.perf_counter()
    losses = _train(model, images, tokens, candidates, recipe, progress)
    train_seconds = time.perf_counter() - start

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    atomic_write(out, lambda tmp: torch.save(state, tmp))
    result = PretrainResult(out, sha256_of(out), len(samples), losses, render_seconds, train_seconds)
    record = {
        "recipe": asdict(recipe),
        "sha256": result.sha256,
        "samples": result.samples,
        "captions": len(captions),
        "render_seconds": round(render_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "losses": [round(x, 4) for x in losses],
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
    }
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(out.with_suffix(".json"), lambda tmp: tmp.write_text(text))
    return result


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, caption_ids: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE of L2-normalised `image` and `text` embeddings (B, D), where samples
    with the same caption id (B,) share the target probability."""
    logits = logit_scale.exp() * image @ text.t()  # (B, B)
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)  # `same` is symmetric: one target serves both ways
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def _train(model, images, tokens, candidates, recipe: Recipe, progress: Progress | None) -> list[float]:
    generator = torch.Generator().manual_seed(recipe.seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
    )
    warm = max(1, round(recipe.warmup * recipe.steps))

    def factor(step: int) -> float:  # linear warm-up, then cosine decay to 0
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, recipe.steps - warm)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    n, window, losses = len(images), [], []
    log_every = max(1, recipe.steps // 50)
    model.train()
    for step in range(recipe.steps):
        batch = torch.randint(n, (min(recipe.batch_size, n),), generator=generator)
        pixels = _augment(images[batch], recipe.min_crop, generator)
        pixels = normalize_pixels(pixels)
        caption_ids = torch.stack(
            [
                c[torch.randint(len(c), (1,), generator=generator)]
                for c in (candidates[i] for i in batch.tolist())
            ]
        ).squeeze(1)
        # Each distinct caption of the batch is encoded once ("a photo of a car" comes up often).
        unique, inverse = torch.unique(caption_ids, return_inverse=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
            image, text = model.encode_image(pixels), model.encode_text(tokens[unique])
        image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)[inverse]
        loss = contrastive_loss(image, text, caption_ids, model.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        window.append(loss.item())
        if len(window) == log_every or step == recipe.steps - 1:
            losses.append(sum(window) / len(window))
            window = []
        if progress:
            progress("train", step + 1, recipe.steps, losses[-1] if losses else loss.item())
    return losses


def _augment(images: torch.Tensor, min_crop: float, generator: torch.Generator) -> torch.Tensor:
    """A random square crop of each image (B, 3, R, R) uint8, resized back to R, half of them
    flipped: (B, 3, R, R) float32 in [0, 255]."""
    B, _, R, _ = images.shape
    side = R * (min_crop + (1 - min_crop) * torch.rand(B, generator=generator))
    x0 = (R - side) * torch.rand(B, generator=generator)
    y0 = (R - side) * torch.rand(B, generator=generator)
    boxes = torch.stack([torch.arange(B, dtype=torch.float32), x0, y0, x0 + side, y0 + side], dim=1)
    crops = roi_align(images.float(), boxes, output_size=R, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = torch.rand(B, generator=generator) < 0.5
    crops[flip] = crops[flip].flip(-1)
    return crops


def _check(recipe: Recipe) -> None:
    for name in ("scenes", "looks_per_scene", "steps", "batch_size", "render_size"):
        if getattr(recipe, name) < 1:
            raise ClipgapError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(recipe, name)}")
    if recipe.crops_per_image < 0:
        raise ClipgapError(f"--crops-per-image must be at least 0, not {recipe.crops_per_image}")
    for name in ("lr", "weight_decay"):
        value = getattr(recipe, name)
        if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
            raise ClipgapError(f"--{name.replace('_', '-')} {value} is out of range; give a finite value > 0")
    for name in ("min_severity", "full_strength"):
        if not 0 <= getattr(recipe, name) <= 1:
            raise ClipgapError(
                f"--{name.replace('_', '-')} {getattr(recipe, name)} is out of range; use 0 to 1"
            )
    if not 0 < recipe.min_crop <= 1 or not 0 <= recipe.warmup < 1:
        raise ClipgapError("--min-crop must be in (0, 1] and the warm-up fraction in [0, 1)")
