"""Do the semantic augmentations move source features towards a target domain's real features?

For every form (`StatisticsShift`): the fraction of the gap in channel means and in channel
standard deviations that an augmentation closes, at the stage where it acts and at layer3.
For the offset form, also its direction (`Shift`), as follows.

The detector adds the spatial mean a_j (C,) of A_j to every position of a source image's
layer3 map. Whether that imitates a target domain is measured on layer3's channel means:
mu_s (C,) over source crops and mu_t (C,) over crops of the target domain's images. The gap
between the domains is mu_t − mu_s; an offset closes it when mu_s + a_j lies nearer mu_t:

    closed_j = 1 − |mu_t − (mu_s + a_j)| / |mu_t − mu_s|      (1: all of it, < 0: moved away)
    cos_j    = cos(a_j, mu_t − mu_s)                            (direction alone, whatever the size)

Before optimisation A = 0, so closed = 0 and the distance is the gap itself. A target
domain's images serve this measurement only: never the detector's training, never A's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Shift:
    """How one offset a_j moves the source's channel means relative to one target domain's."""

    prompt: str
    distance_before: float  # |mu_t − mu_s|, at A = 0
    distance_after: float  # |mu_t − (mu_s + a_j)|
    closed: float  # 1 − after / before
    cosine: float  # cos(a_j, mu_t − mu_s)
    size: float  # |a_j| / |mu_t − mu_s|


def channel_means(features: torch.Tensor) -> torch.Tensor:
    """Per-channel means over images and positions: (N, C, H, W) -> (C,)."""
    return features.float().mean(dim=(0, 2, 3))


def feature_shifts(
    source: torch.Tensor, target: torch.Tensor, offsets: torch.Tensor, prompts: list[str]
) -> list[Shift]:
    """One `Shift` per offset: source and target channel means (C,), offsets (M, C, S, S)."""
    gap = target - source
    means = offsets.float().mean(dim=(2, 3))  # (M, C), what the detector adds
    before = gap.norm().item()
    after = (gap[None] - means).norm(dim=1)
    cosine = F.cosine_similarity(means, gap[None].expand_as(means), dim=1, eps=1e-12)
    return [
        Shift(
            prompt=prompt,
            distance_before=before,
            distance_after=after[j].item(),
            closed=1 - after[j].item() / before if before > 0 else 0.0,
            cosine=cosine[j].item(),
            size=means[j].norm().item() / before if before > 0 else 0.0,
        )
        for j, prompt in enumerate(prompts)
    ]


# -- every form: channel means and standard deviations -------------------------------------------


@dataclass(frozen=True)
class StatisticsShift:
    """How one augmentation moves the source's channel statistics relative to one target
    domain's: the fraction of the gap closed (1: all of it, < 0: moved away) in channel means
    and in channel standard deviations, at the stage where the form acts and at layer3."""

    prompt: str
    stage_mean: float
    stage_std: float
    layer3_mean: float
    layer3_std: float


def channel_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean over images of each image's per-channel mean and standard deviation over
    positions: (N, C, H, W) -> 2 x (C,)."""
    f = features.float()
    return f.mean(dim=(2, 3)).mean(0), f.std(dim=(2, 3), unbiased=False).mean(0)


def closed_fraction(source: torch.Tensor, target: torch.Tensor, moved: torch.Tensor) -> float:
    """1 − |target − moved| / |target − source|: 0 where nothing moved; 0 for no gap."""
    gap = (target - source).norm().item()
    return 1 - (target - moved).norm().item() / gap if gap > 0 else 0.0


def statistics_shift(
    source: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor],
    moved: tuple[torch.Tensor, torch.Tensor],
) -> tuple[float, float]:
    """The fractions closed in means and in standard deviations, each `(mean (C,), std (C,))`."""
    return tuple(closed_fraction(s, t, m) for s, t, m in zip(source, target, moved, strict=True))
