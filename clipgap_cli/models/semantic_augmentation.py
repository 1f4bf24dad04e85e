"""CLIP the Gap's semantic augmentation as an MMDetection neck: layer3 map + mean(A_j), in training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from mmdet.registry import MODELS
from mmengine.model import BaseModule

from clipgap_cli.artifacts import decode_tensor, read_offsets


@MODELS.register_module()
class SemanticAugmentation(BaseModule):
    """Adds a randomly chosen semantic augmentation to V_a's map in training; identity in eval.

    In training mode, with probability `prob` per batch (one coin flip for the whole batch,
    as the reference), each image's map gets the spatial mean of A_j, j drawn uniformly and
    independently per image: F'_n = F_n + mean_hw(A_j). The draws use torch's global RNG,
    which mmengine seeds. In eval mode the maps pass unchanged.

    The means (M, C) come from exactly one of:
        offsets: the A artifact of `clipgap optimize-augs` (`augs/offsets.pt`), read for
            its `offset_means`;
        offset_means: the (M, C) means themselves, as nested lists or an `encode_tensor` dict
            (as `clipgap export` writes them), for a config that needs no run directory (an
            exported model; the checkpoint holds them too).
    They are kept as the buffer `offset_means`, saved in checkpoints, never trained.

    Args:
        prob: the probability that a batch is augmented (the reference: 0.5).

    `forward(x)`: `(layer3 map (N, C, H, W),)` -> the same tuple shape, as an mmdet neck.
    """

    def __init__(
        self,
        offsets: str | Path | None = None,
        offset_means: Sequence[Sequence[float]] | dict | None = None,
        prob: float = 0.5,
        init_cfg=None,
    ):
        super().__init__(init_cfg)
        if (offsets is None) == (offset_means is None):
            raise ValueError("SemanticAugmentation takes the offsets file or the offset_means, exactly one")
        if not 0 <= prob <= 1:
            raise ValueError(f"SemanticAugmentation's prob must be in [0, 1], got {prob}")
        means = (
            read_offsets(Path(offsets))["offset_means"]
            if offsets is not None
            else decode_tensor(offset_means)
        )
        if means.dim() != 2 or len(means) == 0:
            raise ValueError(f"offset_means must be (M, C) with M >= 1, got shape {tuple(means.shape)}")
        self.register_buffer("offset_means", means.float())  # (M, C)
        self.prob = prob

    def forward(self, x: Sequence[torch.Tensor]) -> tuple[torch.Tensor]:
        (features,) = x  # the C4 detector has one map
        if features.shape[1] != self.offset_means.shape[1]:
            raise ValueError(
                f"the semantic augmentations have {self.offset_means.shape[1]} channels but the "
                f"backbone's map has {features.shape[1]}: they were made with another CLIP model"
            )
        if not self.training or torch.rand(()).item() >= self.prob:
            return (features,)
        j = torch.randint(len(self.offset_means), (len(features),))  # (N,)
        shift = self.offset_means[j.to(features.device)].to(features.dtype)  # (N, C)
        return (features + shift[:, :, None, None],)
