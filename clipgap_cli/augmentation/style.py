"""The `style` form of the semantic augmentations: CLIP-guided feature statistics, PØDA's PIN
(prompt-driven instance normalisation, Fahes et al., ICCV 2023).

At a stage of CLIP's image encoder (layer1, layer2 or layer3), a feature map f (N, C, H, W)
has per-image, per-channel statistics μ(f), σ(f) over its H×W positions. Restyling with a
style (μ_j, σ_j), each (C,), replaces them:

    f' = σ_j ⊙ (f − μ(f)) / σ(f) + μ_j

For each target prompt j, (μ_j, σ_j) start at the source crops' mean statistics and are
optimised so that CLIP's embedding of the restyled crops (the rest of the frozen encoder,
every BatchNorm on its stored statistics) meets the prompt's text embedding t_j:

    loss = mean_{j,n} (1 − cos(z_jn, t_j)),   z_jn = V_rest(f'_n with style j)

the absolute target of PØDA (not CLIP the Gap's source→target direction). σ_j is kept ≥ 0.
One style per prompt, shared by all images (PØDA keeps one per source image): a detector
then restyles each training image with a prompt drawn at random (`SemanticAugmentation`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from clipgap_cli.clip.split import STEM, attnpool_token0

STAGES = ("layer1", "layer2", "layer3")
"""Where the style form may act: the output of one of CLIP's ResNet stages."""
EPS = 1e-5  # added to the variance, as instance normalisation does


def stage_features(visual: nn.Module, stage: str, x: torch.Tensor) -> torch.Tensor:
    """The encoder up to and including `stage`: images (N, 3, H, W) -> that stage's map."""
    for name in (*STEM, *STAGES[: STAGES.index(stage) + 1]):
        x = getattr(visual, name)(x)
    return x


def embed_from(visual: nn.Module, stage: str, f: torch.Tensor) -> torch.Tensor:
    """The rest of the encoder after `stage`: that stage's map -> CLIP image embedding (N, D)."""
    for name in (*STAGES[STAGES.index(stage) + 1 :], "layer4"):
        f = getattr(visual, name)(f)
    return attnpool_token0(visual.attnpool, f)


def continue_to(visual: nn.Module, stage: str, f: torch.Tensor, until: str = "layer3") -> torch.Tensor:
    """The stages after `stage` up to and including `until`: `stage`'s map -> `until`'s map."""
    for name in STAGES[STAGES.index(stage) + 1 : STAGES.index(until) + 1]:
        f = getattr(visual, name)(f)
    return f


def statistics(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and standard deviation over positions: (N, C, H, W) -> 2 x (N, C)."""
    mean = f.mean(dim=(2, 3))
    std = (f.var(dim=(2, 3), unbiased=False) + EPS).sqrt()
    return mean, std


def restyle(f: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """f (N, C, H, W) with its statistics replaced by `mean` and `std` (N, C) (or (C,), for all)."""
    own_mean, own_std = statistics(f)
    if mean.dim() == 1:
        mean, std = mean.expand_as(own_mean), std.expand_as(own_std)
    normalised = (f - own_mean[:, :, None, None]) / own_std[:, :, None, None]
    return normalised * std[:, :, None, None] + mean[:, :, None, None]


Embed = Callable[[torch.Tensor], torch.Tensor]
"""The rest of an encoder: a stage's map (N, C, H, W) -> embedding (N, D)."""


def style_loss(
    embed: Embed, features: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """mean over prompts j and crops n of 1 − cos(z_jn, t_j), all M styles in one pass.

    features (N, C, H, W) at the stage `embed` starts from; means, stds (M, C); targets (M, D).
    """
    m, n = len(means), len(features)
    repeated = features[None].expand(m, *features.shape).flatten(0, 1)  # (M*N, C, H, W)
    styled = restyle(repeated, means.repeat_interleave(n, 0), stds.repeat_interleave(n, 0))
    z = F.normalize(embed(styled), dim=-1).view(m, n, -1)
    return (1 - (z * F.normalize(targets, dim=-1)[:, None]).sum(-1)).mean()


def fit_styles(
    embed: Embed,
    batches: Iterable[torch.Tensor],
    targets: torch.Tensor,
    *,
    lr: float,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Optimise one style per target embedding (M, D) by Adam on successive batches of
    features (N, C, H, W) at the stage `embed` starts from (e.g. `stage_features` of crops,
    CLIP in eval mode, as PØDA keeps it). The first batch's mean statistics start every
    style. Returns the styles' means and stds (M, C) and the loss at every step.
    """
    means = stds = optimizer = None
    losses = []
    for step, features in enumerate(batches):
        if means is None:
            start_mean, start_std = (s.mean(0) for s in statistics(features))
            means = start_mean.expand(len(targets), -1).clone().requires_grad_(True)
            stds = start_std.expand(len(targets), -1).clone().requires_grad_(True)
            optimizer = torch.optim.Adam([means, stds], lr=lr)
        loss = style_loss(embed, features, means, stds, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            stds.clamp_(min=0)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    return means.detach(), stds.detach(), losses
