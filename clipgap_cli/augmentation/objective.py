"""The objective of CLIP the Gap's semantic augmentations A_j, and how well they meet it.

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
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from clipgap_cli.clip.split import v_b


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
    z0, q = _targets(visual, features, directions)
    z = _shifted(visual, features, offsets)
    alignment = (1 - (z * q).sum(-1)).mean(dim=1)  # (M,)
    regulariser = (z - z0).abs().mean(dim=(1, 2))  # (M,)
    return (alignment + regulariser).sum() / (len(offsets) + 1)


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


@torch.no_grad()
def alignment(
    visual: nn.Module, features: torch.Tensor, offsets: torch.Tensor, directions: torch.Tensor
) -> tuple[list[float], list[float]]:
    """How far the offsets move the crops' embeddings, per target j: the mean cos(z_j, q_j) and
    the mean cos(z_j − z0, Δ_j) over the crops (features, offsets and directions as for
    `augmentation_loss`)."""
    z0, q = _targets(visual, features, directions)
    z = _shifted(visual, features, offsets)
    to_target = (z * q).sum(-1).mean(1)
    to_direction = F.cosine_similarity(z - z0, directions[:, None].expand_as(z), dim=-1).mean(1)
    return to_target.tolist(), to_direction.tolist()


@torch.no_grad()
def _targets(
    visual: nn.Module, features: torch.Tensor, directions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """z0 (N, D) of the unshifted features (N, C, S, S) and each target's q (M, N, D)."""
    z0 = F.normalize(v_b(visual, features), dim=-1)
    return z0, F.normalize(z0 + directions[:, None], dim=-1)


def _shifted(visual: nn.Module, features: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """z_j of every shifted map, in one V_b pass with a BatchNorm group per target -> (M, N, D)."""
    m, n = len(offsets), len(features)
    shifted = (features[None] + offsets[:, None]).flatten(0, 1)  # (M*N, C, S, S)
    with per_group_batch_norm(visual, groups=m):
        return F.normalize(v_b(visual, shifted), dim=-1).view(m, n, -1)


@contextlib.contextmanager
def per_group_batch_norm(module: nn.Module, groups: int) -> Iterator[None]:
    """Within the block, each BatchNorm2d of `module` that is in training mode normalises
    the `groups` equal consecutive chunks of its batch with separate batch statistics.

    Running statistics are left alone: `optimize-augs` works on a copy of CLIP that it discards.
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
