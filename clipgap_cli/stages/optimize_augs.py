"""Stage `optimize-augs`: learn the semantic augmentations from random crops of the source
images, by Adam: CLIP the Gap's offsets A_j (`--form offset`, the objective of
`clipgap_cli.augmentation.objective`) or per-prompt feature statistics at a stage (`--form
style`, PØDA's PIN: `clipgap_cli.augmentation.style`); write them, a report of how far they
move held-out crops (and, when the dataset has target domains, whether they move source
features towards those domains' real features), and the loss curve."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clipgap_cli.artifacts import load_text_embeddings, offsets_content, styles_content
from clipgap_cli.augmentation.feature_shift import (
    Shift,
    StatisticsShift,
    channel_means,
    channel_statistics,
    feature_shifts,
    statistics_shift,
)
from clipgap_cli.augmentation.objective import alignment, augmentation_loss, text_directions
from clipgap_cli.augmentation.style import (
    STAGES,
    continue_to,
    embed_from,
    fit_styles,
    restyle,
    stage_features,
)
from clipgap_cli.clip.model import load_run_clip, normalize_pixels
from clipgap_cli.clip.split import v_a, visual_dims
from clipgap_cli.data.spec import DataSpec, Split, load_spec
from clipgap_cli.data.synth import EXTRA_DOMAINS
from clipgap_cli.data.synth.corpus import condition_prompt
from clipgap_cli.data.synth.looks import DOMAIN_CONDITIONS
from clipgap_cli.errors import ClipgapError
from clipgap_cli.rundir import AUGS_LOSS_PLOT, AUGS_REPORT, OFFSETS, TEXT_EMBEDDINGS, Run, writes_run

STAGE = "optimize-augs"
CROPS_PER_IMAGE = 15  # the reference takes 15 crops from each of its 4 images per iteration
DETECTOR_SHORT_SIDE, DETECTOR_MAX_SIDE = 600, 1333  # crop sizes are relative to the detector's input scale
HELD_OUT_IMAGES = 16
REPORT_CROPS = 60
FORMS = ("offset", "style")
STYLE_STAGE = "layer1"  # where the style form acts by default: PØDA's stage


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

    def sample(self, count: int, rng: np.random.Generator) -> torch.Tensor:
        """`count` crops (count, 3, S, S), CLIP-normalised, 15 from each of ceil(count/15) images."""
        crops = []
        while len(crops) < count:
            image = self._read(self.images[rng.integers(len(self.images))])
            if image is None:
                continue
            for _ in range(min(CROPS_PER_IMAGE, count - len(crops))):
                crops.append(self._crop(image, rng))
        return normalize_pixels(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float())

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
    return split_images(load_spec(data).train_split)


def split_images(split: Split) -> list[Path]:
    """The images of a split's COCO json that exist on disk."""
    try:
        coco = json.loads(split.ann_file.read_text(encoding="utf-8"))
        names = [entry["file_name"] for entry in coco["images"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ClipgapError(f"cannot read the image list of {split.ann_file}: {err}") from None
    images = [split.image_dir / name for name in names if (split.image_dir / name).is_file()]
    if not images:
        raise ClipgapError(
            f"the split {split.ann_file} lists {len(names)} images, none of them "
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
class DomainShift:
    """Whether the offsets move source features towards one target domain's real features
    (`clipgap_cli.augmentation.feature_shift`): for the prompt that names the domain (None
    when no prompt does) and for the prompt whose offset closes most of the gap."""

    domain: str
    images: int  # the domain's images the crops came from
    named: Shift | None
    best: Shift
    prompts: list[Shift]  # every prompt, in the prompts' order
    statistics: list[StatisticsShift]  # every prompt: channel means and stds closed at layer3


@dataclass(frozen=True)
class StyleDomainShift:
    """Whether the styles move source features towards one target domain's real features, in
    channel means and standard deviations, at their stage and at layer3: for the prompt that
    names the domain (None when no prompt does) and for the prompt that closes most of the
    gap in means at the stage."""

    domain: str
    images: int
    named: StatisticsShift | None
    best: StatisticsShift
    prompts: list[StatisticsShift]


@dataclass(frozen=True)
class OptimizeResult:
    changed: bool  # False when the artifacts were current and nothing was done
    losses: list[float]
    alignment: list[Alignment]
    domains: list[DomainShift] | list[StyleDomainShift]  # per target domain of the dataset; [] without
    form: str = "offset"
    stage: str = "layer3"


@writes_run(STAGE)
def optimize_augs(
    run: Path,
    data: Path,
    *,
    form: str = "offset",
    stage: str | None = None,
    iters: int = 1000,
    crops_per_iter: int = 60,
    lr: float = 0.01,
    crop_size: int = 400,
    bn_mode: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    pretrained: Path | None = None,
    force: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> OptimizeResult:
    """Learn the augmentations of `form` from the run's text embeddings and the dataset's
    source images, and write `augs/offsets.pt`, `augs/report.json` and `augs/loss.png`.

    `offset` (the default, the reference): A (M, C, S, S) at layer3, CLIP's BatchNorms in
    `bn_mode` (default train). `style`: per target prompt, channel means and stds at `stage`
    (default layer1), CLIP's BatchNorms on their stored statistics.
    `pretrained` is the local CLIP weights file, needed only when the text embeddings were
    made from one. Everything is checked before the work starts; the artifacts are written
    only at the end, atomically, so an interrupted run leaves the previous ones intact.
    """
    if iters < 1 or crops_per_iter < 1 or crop_size < 1 or lr <= 0:
        raise ClipgapError("--iters, --crops-per-iter, --crop-size and --lr must be positive")
    form, stage, bn_mode = _check_form(form, stage, bn_mode)
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
    if form == "style":  # the offsets' options stay as they always were
        options |= {"form": form, "stage": stage}
    if not force and all(
        run_dir.is_current(rel, STAGE, options, [TEXT_EMBEDDINGS])
        for rel in (OFFSETS, AUGS_REPORT, AUGS_LOSS_PLOT)
    ):
        return OptimizeResult(changed=False, losses=[], alignment=[], domains=[], form=form, stage=stage)
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
    report_images = report_crops.sample(REPORT_CROPS, np.random.default_rng(seed + 1)).to(device)
    directions = text_directions(text.source, text.targets).to(device)
    spec = load_spec(data)

    if form == "style":
        embed = functools.partial(embed_from, visual, stage)
        batches = (
            _features(visual, crops.sample(crops_per_iter, rng), stage) for _ in range(iters)
        )  # fmt: skip
        means, stds, losses = fit_styles(embed, batches, text.targets.to(device), lr=lr, on_step=on_step)
        means, stds = means.cpu(), stds.cpu()
        measured = _style_alignment(visual, stage, _features(visual, report_images, stage), means, stds, text)
        domains = style_shifts(clip.visual, spec, stage, means, stds, text.target_prompts, crop_size, seed)
        artifact = styles_content(stage, means, stds, text.source_prompt, text.target_prompts)
        _write(run_dir, artifact, losses, measured, domains, options, identity)
        return OptimizeResult(True, losses, measured, domains, form, stage)

    m = len(directions)
    offsets = torch.zeros(m, dims.layer3_channels, dims.roi_size, dims.roi_size, device=device)
    offsets.requires_grad_(True)
    optimizer = torch.optim.Adam([offsets], lr=lr)

    report_features = _features(visual, report_images)
    before = alignment(visual, report_features, offsets.detach(), directions)
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
    after = alignment(visual, report_features, offsets.detach(), directions)

    measured = [
        Alignment(prompt, before[0][j], after[0][j], after[1][j])
        for j, prompt in enumerate(text.target_prompts)
    ]
    learned = offsets.detach().cpu()
    domains = domain_shifts(clip.visual, spec, learned, text.target_prompts, crop_size, seed)
    artifact = offsets_content(learned, text.source_prompt, text.target_prompts)
    _write(run_dir, artifact, losses, measured, domains, options, identity)
    return OptimizeResult(changed=True, losses=losses, alignment=measured, domains=domains)


def _check_form(form: str, stage: str | None, bn_mode: str | None) -> tuple[str, str, str]:
    """The form, its stage and BatchNorm mode, defaults filled; a one-line error for a mismatch."""
    if form not in FORMS:
        raise ClipgapError(f"--form must be one of {', '.join(FORMS)}, not {form!r}")
    if bn_mode not in (None, "train", "eval"):
        raise ClipgapError(f"--bn-mode must be train or eval, not {bn_mode!r}")
    if form == "offset":
        if stage not in (None, "layer3"):
            raise ClipgapError("--stage is the style form's: the offsets act at layer3")
        return form, "layer3", bn_mode or "train"
    stage = stage or STYLE_STAGE
    if stage not in STAGES:
        raise ClipgapError(f"--stage must be one of {', '.join(STAGES)}, not {stage!r}")
    if bn_mode == "train":
        raise ClipgapError("--form style uses CLIP's stored BatchNorm statistics: drop --bn-mode train")
    return form, stage, "eval"


@torch.no_grad()
def _style_alignment(visual, stage, features, means, stds, text) -> list[Alignment]:
    """Per target prompt j, over held-out crops: cos(z, t_j) with the crops' own statistics and
    restyled, and cos(z_j − z0, Δ_j) (the text direction, as for the offsets)."""
    targets = F.normalize(text.targets.to(features.device), dim=-1)
    directions = text_directions(text.source, text.targets).to(features.device)
    z0 = F.normalize(embed_from(visual, stage, features), dim=-1)
    out = []
    for j, prompt in enumerate(text.target_prompts):
        styled = restyle(features, means[j].to(features.device), stds[j].to(features.device))
        z = F.normalize(embed_from(visual, stage, styled), dim=-1)
        direction = F.cosine_similarity(z - z0, directions[j].expand_as(z), dim=-1).mean().item()
        before, after = (z0 @ targets[j]).mean().item(), (z @ targets[j]).mean().item()
        out.append(Alignment(prompt, before, after, direction))
    return out


def domain_shifts(
    visual: nn.Module, spec: DataSpec, offsets: torch.Tensor, prompts: list[str], crop_size: int, seed: int
) -> list[DomainShift]:
    """For each target domain of `spec`, how each offset (M, C, S, S) moves the layer3 channel
    statistics of source crops relative to those of the domain's crops (`_domain_features`)."""
    means = offsets.float().mean(dim=(2, 3))  # (M, C), what the detector adds
    visual = copy.deepcopy(visual).cpu().eval()
    shifts = []
    for name, images, (source, target) in _domain_features(visual, spec, "layer3", crop_size, seed):
        each = feature_shifts(channel_means(source), channel_means(target), offsets, prompts)
        named_as = naming_prompt(name)
        named = next((s for s in each if s.prompt == named_as), None)
        best = max(each, key=lambda s: s.closed)
        s_stats, t_stats = channel_statistics(source), channel_statistics(target)
        statistics = []
        for j, prompt in enumerate(prompts):
            # A constant per channel moves each image's channel means and leaves its stds.
            moved = (s_stats[0] + means[j], s_stats[1])
            closed = statistics_shift(s_stats, t_stats, moved)
            statistics.append(StatisticsShift(prompt, *closed, *closed))
        shifts.append(DomainShift(name, images, named, best, each, statistics))
    return shifts


def style_shifts(
    visual: nn.Module,
    spec: DataSpec,
    stage: str,
    means: torch.Tensor,
    stds: torch.Tensor,
    prompts: list[str],
    crop_size: int,
    seed: int,
) -> list[StyleDomainShift]:
    """For each target domain of `spec`, how each style (means and stds (M, C) at `stage`)
    moves the channel statistics of source crops, at the stage and at layer3, relative to
    those of the domain's crops."""
    visual = copy.deepcopy(visual).cpu().eval()
    shifts = []
    for name, images, (source, target) in _domain_features(visual, spec, stage, crop_size, seed):
        with torch.no_grad():
            source3, target3 = (continue_to(visual, stage, f) for f in (source, target))
        each = []
        for j, prompt in enumerate(prompts):
            with torch.no_grad():
                moved3 = continue_to(visual, stage, restyle(source, means[j], stds[j]))
            at_stage = statistics_shift(
                channel_statistics(source), channel_statistics(target), (means[j], stds[j])
            )
            at_layer3 = statistics_shift(
                channel_statistics(source3), channel_statistics(target3), channel_statistics(moved3)
            )
            each.append(StatisticsShift(prompt, *at_stage, *at_layer3))
        named_as = naming_prompt(name)
        named = next((s for s in each if s.prompt == named_as), None)
        shifts.append(StyleDomainShift(name, images, named, max(each, key=lambda s: s.stage_mean), each))
    return shifts


def _domain_features(visual: nn.Module, spec: DataSpec, stage: str, crop_size: int, seed: int):
    """Per target domain of `spec` (`visual`: CLIP's image encoder, in eval mode): its name,
    the number of images its crops came from, and the `stage` maps of source and target crops.

    Crops are taken as for the optimisation, REPORT_CROPS from at most HELD_OUT_IMAGES images
    of each domain's evaluation split (the source's, for the source); CLIP runs with its
    stored BatchNorm statistics, so that each domain's statistics show, as in a test image.
    A domain whose images are not on disk is left out (all of them, without the source's).
    """
    if not spec.targets:
        return
    size = visual_dims(visual).image_size

    def features(domain: str, key: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng([seed, key])
        images = split_images(spec.eval_split(domain))
        chosen = [images[i] for i in sorted(rng.permutation(len(images))[:HELD_OUT_IMAGES])]
        crops = SourceCrops(chosen, crop_size, size).sample(REPORT_CROPS, rng)
        return _features(visual, crops, stage), len(chosen)

    try:
        source, _ = features(spec.source.name, 0)
    except ClipgapError:  # the source's evaluation images are not on disk: nothing to compare with
        return
    for k, domain in enumerate(spec.targets, start=1):
        try:
            target, images = features(domain.name, k)
        except ClipgapError:  # a target domain whose images are not on disk: nothing to measure
            continue
        yield domain.name, images, (source, target)


def naming_prompt(domain: str) -> str | None:
    """The default prompts' wording of a Diverse Weather (or synthetic benchmark) domain:
    "an image taken on a rain night" for night_rainy, "an image taken on a snow day" for the
    extra domain day_snow; None for a domain of other data."""
    condition = DOMAIN_CONDITIONS.get(domain) or EXTRA_DOMAINS.get(domain)
    return condition_prompt(condition) if condition else None


@torch.no_grad()
def _features(visual: nn.Module, crops: torch.Tensor, stage: str = "layer3") -> torch.Tensor:
    """CLIP's map at `stage` of the crops, without gradient (V_a for layer3):
    (N, 3, S*16, S*16) -> (N, C, ...)."""
    crops = crops.to(next(visual.parameters()).device)
    return v_a(visual, crops) if stage == "layer3" else stage_features(visual, stage, crops)


def _write(run_dir, artifact, losses, measured, domains, options, identity) -> None:
    report = {
        "form": options.get("form", "offset"),
        "stage": options.get("stage", "layer3"),
        "losses": losses,
        "alignment": [a.__dict__ for a in measured],
        "target_domains": [asdict(d) for d in domains],
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
