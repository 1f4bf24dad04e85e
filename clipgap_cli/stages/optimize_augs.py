"""Stage `optimize-augs`: learn CLIP the Gap's semantic augmentations A_j (DESIGN §3).

For crops x of source images, with f = V_a(x), z0 = normalize(V_b(f)), the text direction
Δ_j = normalize(t_j − t_s) and the target q_j = normalize(z0 + Δ_j), each offset A_j
(C, S, S) is optimised so that z_j = normalize(V_b(f + A_j)) moves to q_j while staying
close to z0:

    loss = Σ_j [ mean_n (1 − <z_j, q_j>) + mean_{n,d} |z_j − z0| ] / (M + 1)

(the reference divides by the number of prompts, source included). Only A is optimised;
CLIP's weights never change.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch import nn

from clipgap_cli.clip.model import load_run_clip
from clipgap_cli.clip.split import v_a, v_b, visual_dims
from clipgap_cli.data.spec import load_spec
from clipgap_cli.errors import ClipgapError
from clipgap_cli.rundir import AUGS_LOSS_PLOT, AUGS_REPORT, OFFSETS, TEXT_EMBEDDINGS, Run
from clipgap_cli.stages.encode_prompts import load_text_embeddings

STAGE = "optimize-augs"
FORMAT = 1
CROPS_PER_IMAGE = 15  # the reference takes 15 crops from each of its 4 images per iteration
DETECTOR_SHORT_SIDE, DETECTOR_MAX_SIDE = 600, 1333  # crop sizes are relative to the detector's input scale
HELD_OUT_IMAGES = 16
REPORT_CROPS = 60


# -- the loss ------------------------------------------------------------------------------


def text_directions(source: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Δ_j = normalize(t_j − t_s): source (D,), targets (M, D) -> (M, D)."""
    return F.normalize(targets - source, dim=-1)


def augmentation_loss(
    visual: nn.Module, features: torch.Tensor, offsets: torch.Tensor, directions: torch.Tensor
) -> torch.Tensor:
    """The loss of all M targets in one batched V_b pass.

    features (N, C, S, S) = V_a(crops), offsets (M, C, S, S), directions (M, D) -> scalar.
    In training mode, each target's N shifted maps get their own BatchNorm statistics, as
    they would if each ran alone (the reference loops over targets).
    """
    m, n = len(offsets), len(features)
    with torch.no_grad():
        z0 = F.normalize(v_b(visual, features), dim=-1)  # (N, D)
        q = F.normalize(z0 + directions[:, None], dim=-1)  # (M, N, D)
    shifted = (features[None] + offsets[:, None]).flatten(0, 1)  # (M*N, C, S, S)
    with per_group_batch_norm(visual, groups=m):
        z = F.normalize(v_b(visual, shifted), dim=-1).view(m, n, -1)  # (M, N, D)
    alignment = (1 - (z * q).sum(-1)).mean(dim=1)  # (M,)
    regulariser = (z - z0).abs().mean(dim=(1, 2))  # (M,)
    return (alignment + regulariser).sum() / (m + 1)


def per_domain_loss(
    visual: nn.Module, features: torch.Tensor, offsets: torch.Tensor, directions: torch.Tensor
) -> torch.Tensor:
    """The same loss written plainly, one target at a time, as the reference computes it
    (for checks and benchmarks; the stage uses `augmentation_loss`)."""
    with torch.no_grad():
        z0 = F.normalize(v_b(visual, features), dim=-1)
    total = features.new_zeros(())
    for a_j, delta_j in zip(offsets, directions, strict=True):
        q_j = F.normalize(z0 + delta_j, dim=-1)
        z_j = F.normalize(v_b(visual, features + a_j), dim=-1)
        total = total + (1 - (z_j * q_j).sum(-1)).mean() + F.l1_loss(z_j, z0)
    return total / (len(offsets) + 1)


@contextlib.contextmanager
def per_group_batch_norm(module: nn.Module, groups: int) -> Iterator[None]:
    """Within the block, each BatchNorm2d of `module` that is in training mode normalises
    the `groups` equal consecutive chunks of its batch with separate batch statistics.

    Running statistics are left alone: this stage works on a copy of CLIP that it discards.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.forward = functools.partial(_grouped_batch_norm, norm, groups)
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward


def _grouped_batch_norm(norm: nn.BatchNorm2d, groups: int, x: torch.Tensor) -> torch.Tensor:
    if not norm.training:
        return nn.BatchNorm2d.forward(norm, x)
    gn, c, h, w = x.shape
    n = gn // groups
    # (G*N, C, H, W) -> (N, G*C, H, W): per-channel statistics are then per group and channel.
    stacked = x.view(groups, n, c, h, w).transpose(0, 1).reshape(n, groups * c, h, w)
    out = F.batch_norm(
        stacked, None, None, norm.weight.repeat(groups), norm.bias.repeat(groups), True, 0.0, norm.eps
    )
    return out.view(n, groups, c, h, w).transpose(0, 1).reshape(gn, c, h, w)


# -- the crops -----------------------------------------------------------------------------


class SourceCrops:
    """Random square crops of source images, as the reference makes them: each image at the
    detector's scale (short side 600, long side at most 1333), flipped with probability 0.5,
    cropped to `crop_size` px (at most its short side) and resized to CLIP's input size."""

    def __init__(self, images: list[Path], crop_size: int, image_size: int):
        self.images = list(images)
        self.crop_size = crop_size
        self.image_size = image_size
        self.unreadable: set[Path] = set()
        mean, std = torch.tensor(OPENAI_DATASET_MEAN), torch.tensor(OPENAI_DATASET_STD)
        self._mean, self._std = mean.view(3, 1, 1) * 255, std.view(3, 1, 1) * 255

    def sample(self, count: int, rng: np.random.Generator) -> torch.Tensor:
        """`count` crops (count, 3, S, S), CLIP-normalised, 15 from each of ceil(count/15) images."""
        crops = []
        while len(crops) < count:
            image = self._read(self.images[rng.integers(len(self.images))])
            if image is None:
                continue
            for _ in range(min(CROPS_PER_IMAGE, count - len(crops))):
                crops.append(self._crop(image, rng))
        pixels = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
        return (pixels - self._mean) / self._std

    def _read(self, path: Path) -> Image.Image | None:
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError:
            self.unreadable.add(path)
            if self.unreadable.issuperset(self.images):
                raise ClipgapError(
                    f"none of the {len(self.images)} source training images can be read "
                    f"(e.g. {path}); check the dataset's image directory"
                ) from None
            return None

    def _crop(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        w, h = image.size
        scale = min(DETECTOR_SHORT_SIDE / min(w, h), DETECTOR_MAX_SIDE / max(w, h))
        side = max(1, min(round(self.crop_size / scale), w, h))  # crop_size at the detector's scale
        x, y = rng.integers(w - side + 1), rng.integers(h - side + 1)
        crop = image.crop((x, y, x + side, y + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(crop.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR))


def source_images(data: Path) -> list[Path]:
    """The source training images of the dataset spec at `data` that exist on disk."""
    spec = load_spec(data)
    split = spec.train_split
    try:
        coco = json.loads(split.ann_file.read_text(encoding="utf-8"))
        names = [entry["file_name"] for entry in coco["images"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ClipgapError(f"cannot read the image list of {split.ann_file}: {err}") from None
    images = [split.image_dir / name for name in names if (split.image_dir / name).is_file()]
    if not images:
        raise ClipgapError(
            f"the source training split {split.ann_file} lists {len(names)} images, none of them "
            f"found in {split.image_dir}; the dataset has no usable images"
        )
    return images


# -- the stage -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Alignment:
    """Per target prompt j, means over held-out crops, at A = 0 and after optimisation."""

    prompt: str
    cos_to_target_before: float  # cos(z_j, q_j) at A = 0, i.e. cos(z0, q_j)
    cos_to_target_after: float
    cos_to_direction_after: float  # cos(z_j − z0, Δ_j); 0 at A = 0, where z_j = z0


@dataclass(frozen=True)
class OptimizeResult:
    changed: bool  # False when the artifacts were current and nothing was done
    losses: list[float]
    alignment: list[Alignment]


def optimize_augs(
    run: Path,
    data: Path,
    *,
    iters: int = 1000,
    crops_per_iter: int = 60,
    lr: float = 0.01,
    crop_size: int = 400,
    bn_mode: str = "train",
    seed: int = 0,
    device: str = "cpu",
    pretrained: Path | None = None,
    force: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> OptimizeResult:
    """Learn A (M, C, S, S) from the run's text embeddings and the dataset's source images,
    and write `augs/offsets.pt`, `augs/report.json` and `augs/loss.png`.

    `pretrained` is the local CLIP weights file, needed only when the text embeddings were
    made from one. Everything is checked before the work starts; the artifacts are written
    only at the end, atomically, so an interrupted run leaves the previous ones intact.
    """
    if iters < 1 or crops_per_iter < 1 or crop_size < 1 or lr <= 0:
        raise ClipgapError("--iters, --crops-per-iter, --crop-size and --lr must be positive")
    if bn_mode not in ("train", "eval"):
        raise ClipgapError(f"--bn-mode must be train or eval, not {bn_mode!r}")
    run_dir = Run.open(run)
    text = load_text_embeddings(run_dir)
    images = source_images(data)
    options = {
        "data": str(Path(data).resolve()),
        "iters": iters,
        "crops_per_iter": crops_per_iter,
        "lr": lr,
        "crop_size": crop_size,
        "bn_mode": bn_mode,
        "seed": seed,
    }
    if not force and all(
        run_dir.is_current(rel, STAGE, options, [TEXT_EMBEDDINGS])
        for rel in (OFFSETS, AUGS_REPORT, AUGS_LOSS_PLOT)
    ):
        return OptimizeResult(changed=False, losses=[], alignment=[])
    clip, identity = load_run_clip(text.clip, pretrained)
    run_dir.check_clip([TEXT_EMBEDDINGS], identity)

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    visual = copy.deepcopy(clip.visual).to(device).train(bn_mode == "train")
    dims = visual_dims(visual)
    order = rng.permutation(len(images))
    held_out = max(1, min(HELD_OUT_IMAGES, len(images) // 10))
    train_images = [images[i] for i in order[held_out:]] or images
    report_crops = SourceCrops([images[i] for i in order[:held_out]], crop_size, dims.image_size)
    crops = SourceCrops(train_images, crop_size, dims.image_size)

    directions = text_directions(text.source, text.targets).to(device)
    m = len(directions)
    offsets = torch.zeros(m, dims.layer3_channels, dims.roi_size, dims.roi_size, device=device)
    offsets.requires_grad_(True)
    optimizer = torch.optim.Adam([offsets], lr=lr)

    report_features = _features(visual, report_crops.sample(REPORT_CROPS, np.random.default_rng(seed + 1)))
    before = _alignment(visual, report_features.to(device), offsets.detach(), directions)
    losses = []
    for step in range(iters):
        features = _features(visual, crops.sample(crops_per_iter, rng))
        loss = augmentation_loss(visual, features, offsets, directions)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    after = _alignment(visual, report_features.to(device), offsets.detach(), directions)

    alignment = [
        Alignment(prompt, before[0][j], after[0][j], after[1][j])
        for j, prompt in enumerate(text.target_prompts)
    ]
    _write(run_dir, text, offsets.detach().cpu(), losses, alignment, options, identity)
    return OptimizeResult(changed=True, losses=losses, alignment=alignment)


@torch.no_grad()
def _features(visual: nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """V_a of the crops, without gradient: (N, 3, S*16, S*16) -> (N, C, S, S)."""
    return v_a(visual, crops.to(next(visual.parameters()).device))


@torch.no_grad()
def _alignment(
    visual: nn.Module, features: torch.Tensor, offsets: torch.Tensor, directions: torch.Tensor
) -> tuple[list[float], list[float]]:
    """Per target: mean cos(z_j, q_j) and mean cos(z_j − z0, Δ_j) over the crops."""
    m, n = len(offsets), len(features)
    z0 = F.normalize(v_b(visual, features), dim=-1)
    q = F.normalize(z0 + directions[:, None], dim=-1)
    with per_group_batch_norm(visual, groups=m):
        z = F.normalize(v_b(visual, (features[None] + offsets[:, None]).flatten(0, 1)), dim=-1).view(m, n, -1)
    to_target = (z * q).sum(-1).mean(1)
    to_direction = F.cosine_similarity(z - z0, directions[:, None].expand_as(z), dim=-1).mean(1)
    return to_target.tolist(), to_direction.tolist()


def _write(run_dir, text, offsets, losses, alignment, options, identity) -> None:
    artifact = {
        "format": FORMAT,
        "offsets": offsets,  # (M, C, S, S)
        "offset_means": offsets.mean(dim=(2, 3)),  # (M, C): what the detector adds
        "source_prompt": text.source_prompt,
        "target_prompts": list(text.target_prompts),
    }
    report = {
        "losses": losses,
        "alignment": [a.__dict__ for a in alignment],
    }
    common = dict(stage=STAGE, options=options, inputs=[TEXT_EMBEDDINGS], clip=identity)
    run_dir.write(OFFSETS, lambda tmp: torch.save(artifact, tmp), **common)
    run_dir.write(AUGS_REPORT, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"), **common)
    run_dir.write(AUGS_LOSS_PLOT, lambda tmp: _plot_losses(losses, tmp), **common)


def _plot_losses(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(range(1, len(losses) + 1), losses, linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("optimize-augs: semantic augmentation loss")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def load_offsets(run: Run) -> dict:
    """The verified A artifact: `offsets` (M, C, S, S), `offset_means` (M, C), the prompts."""
    return read_offsets(run.verified_path(OFFSETS))


def read_offsets(path: Path) -> dict:
    """An A file as this stage writes it, by path (for configs that name it)."""
    if not path.is_file():
        raise ClipgapError(f"no semantic augmentations at {path}; make them with `clipgap {STAGE}`")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ClipgapError(
            f"{path} is not an offsets file of format {FORMAT}; re-run `clipgap {STAGE} --force`"
        )
    return data
