"""The semantic augmentations as an MMDetection module, in training only: CLIP the Gap's offsets
(layer3 map + mean(A_j)) or the style form's feature statistics (PØDA's PIN at a stage)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from mmdet.registry import MODELS
from mmengine.model import BaseModule

from clipgap_cli.artifacts import augmentation_form, decode_tensor, read_offsets
from clipgap_cli.augmentation.style import STAGES, restyle, statistics

Tensor2D = Sequence[Sequence[float]] | dict  # nested lists, or an `encode_tensor` dict


@MODELS.register_module()
class SemanticAugmentation(BaseModule):
    """Applies a randomly chosen semantic augmentation to a feature map in training; identity
    in eval mode.

    In training mode, with probability `prob` per batch (one coin flip for the whole batch, as
    the reference), each image gets augmentation j, drawn uniformly and independently per
    image, by the artifact's form:

    - offset (CLIP the Gap): F'_n = F_n + mean_hw(A_j) on the layer3 map;
    - style (PØDA's PIN): F'_n = σ_j ⊙ (F_n − μ(F_n)) / σ(F_n) + μ_j on the map of `stage`,
      μ(F_n), σ(F_n) the image's own per-channel statistics. With `mix`, each image and
      channel blends its own statistics with the style's by s ~ U(0, 1), as PØDA's option.

    The draws use torch's global RNG, which mmengine seeds. The tensors come from exactly one of:
        offsets: the artifact of `clipgap optimize-augs` (`augs/offsets.pt`), of either form;
        offset_means: the offset form's (M, C) means themselves, as nested lists or an
            `encode_tensor` dict (as `clipgap export` writes them);
        style_means and style_stds (with `stage`): the style form's (M, C) statistics, likewise.
    `stage`, given with a style file, must be the file's (`train` writes it into the config).
    They are kept as buffers (`offset_means`, or `style_means` and `style_stds`), saved in
    checkpoints, never trained.

    Args:
        prob: the probability that a batch is augmented (the reference: 0.5).
        mix: style form only: blend statistics instead of replacing them.

    `stage` says where the module acts: `layer3` for offsets. `forward(x)`: `(map (N, C, H, W),)`
    -> the same tuple shape, as an mmdet neck.
    """

    def __init__(
        self,
        offsets: str | Path | None = None,
        offset_means: Tensor2D | None = None,
        style_means: Tensor2D | None = None,
        style_stds: Tensor2D | None = None,
        stage: str | None = None,
        prob: float = 0.5,
        mix: bool = False,
        init_cfg=None,
    ):
        super().__init__(init_cfg)
        given = [offsets is not None, offset_means is not None, style_means is not None]
        if sum(given) != 1 or (style_means is None) != (style_stds is None):
            raise ValueError(
                "SemanticAugmentation takes exactly one of: the offsets file, offset_means, "
                "or style_means with style_stds"
            )
        if not 0 <= prob <= 1:
            raise ValueError(f"SemanticAugmentation's prob must be in [0, 1], got {prob}")
        if offsets is not None:
            content = read_offsets(Path(offsets))
            if augmentation_form(content) == "style":
                if stage not in (None, content["stage"]):
                    raise ValueError(f"{offsets} holds styles of {content['stage']}, not of {stage}")
                style_means, style_stds = content["style_means"], content["style_stds"]
                stage = content["stage"]
            else:
                offset_means = content["offset_means"]
        if style_means is not None:
            if stage not in STAGES:
                raise ValueError(f"the style form acts at one of {', '.join(STAGES)}, not {stage!r}")
            self.form, self.stage = "style", stage
            self.register_buffer("style_means", _matrix(style_means, "style_means"))
            self.register_buffer("style_stds", _matrix(style_stds, "style_stds"))
            if self.style_stds.shape != self.style_means.shape:
                raise ValueError("style_means and style_stds must have the same shape")
        else:
            self.form, self.stage = "offset", "layer3"
            self.register_buffer("offset_means", _matrix(offset_means, "offset_means"))  # (M, C)
        if mix and self.form != "style":
            raise ValueError("SemanticAugmentation's mix applies to the style form only")
        self.prob, self.mix = prob, mix

    @property
    def channels(self) -> int:
        return (self.style_means if self.form == "style" else self.offset_means).shape[1]

    def forward(self, x: Sequence[torch.Tensor]) -> tuple[torch.Tensor]:
        (features,) = x  # one map: the stage's
        if features.shape[1] != self.channels:
            raise ValueError(
                f"the semantic augmentations have {self.channels} channels but the backbone's "
                f"{self.stage} map has {features.shape[1]}: they were made with another CLIP model"
            )
        if not self.training or torch.rand(()).item() >= self.prob:
            return (features,)
        count = len(self.style_means if self.form == "style" else self.offset_means)
        j = torch.randint(count, (len(features),)).to(features.device)  # (N,)
        if self.form == "offset":
            shift = self.offset_means[j].to(features.dtype)  # (N, C)
            return (features + shift[:, :, None, None],)
        mean, std = self.style_means[j], self.style_stds[j]  # (N, C)
        if self.mix:
            own_mean, own_std = statistics(features.float())
            s = torch.rand(own_mean.shape).to(features.device)
            mean, std = s * own_mean + (1 - s) * mean, s * own_std + (1 - s) * std
        return (restyle(features.float(), mean, std).to(features.dtype),)


def _matrix(value, name: str) -> torch.Tensor:
    matrix = value if isinstance(value, torch.Tensor) else decode_tensor(value)
    if matrix.dim() != 2 or len(matrix) == 0:
        raise ValueError(f"{name} must be (M, C) with M >= 1, got shape {tuple(matrix.shape)}")
    return matrix.float()
