"""CLIP's ModifiedResNet as MMDetection parts: V_a as the backbone, V_b as the RoI shared head.

Both copy their layers from the one CLIP model `load_clip` keeps per process, so they start
from the same weights (the paper's V_b ∘ V_a is CLIP's image encoder) without loading it twice.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from clipgap_cli.clip.model import load_clip
from clipgap_cli.clip.split import STEM, V_A, V_B, attnpool_token0, visual_dims

# What `frozen_stages = i` freezes: the first i + 1 of these (mmdet ResNet's numbering).
_STAGES = (STEM, ("layer1",), ("layer2",), ("layer3",))


class _CLIPParts(BaseModule):
    """Copies of the parts `names` of CLIP `clip`'s image encoder, trainable, under open_clip's names."""

    def __init__(self, clip: Mapping, names: Sequence[str], norm_eval: bool, init_cfg: dict | None):
        super().__init__(init_cfg)
        visual = load_clip(clip["name"], clip.get("pretrained")).visual
        self.dims = visual_dims(visual)
        for name in names:
            # A copy: the loaded model is shared, and these layers train.
            self.add_module(name, copy.deepcopy(getattr(visual, name)))
        self.requires_grad_(True)
        self.norm_eval = norm_eval

    def _freeze(self, frozen_stages: int) -> None:
        """Freeze (`requires_grad=False`) the stem and layer1..layer_i for `frozen_stages` = i;
        -1 freezes nothing."""
        if not -1 <= frozen_stages < len(_STAGES):
            raise ValueError(f"frozen_stages must be -1..{len(_STAGES) - 1}, got {frozen_stages}")
        for stage in _STAGES[: frozen_stages + 1]:
            for name in stage:
                getattr(self, name).requires_grad_(False)
        self.frozen_stages = frozen_stages

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self


@MODELS.register_module()
class CLIPResNetBackbone(_CLIPParts):
    """V_a of a CLIP ResNet as an MMDetection backbone: images -> the layer3 map, stride 16.

    Args:
        clip: the CLIP model, `dict(name='RN101', pretrained='openai')`; `pretrained` is an
            open_clip tag, a checkpoint file, or None for (seeded) random weights.
        frozen_stages: -1 trains everything; i freezes the stem and layer1..layer_i
            (`requires_grad=False`). The default 2 is the reference's: stem, layer1 and layer2
            frozen, layer3 trains.
        norm_eval: False (default, as the reference) runs every BatchNorm in training mode
            when the model trains, frozen stages included: batch statistics, running stats
            updated. True keeps every BatchNorm in eval mode (the stored statistics).
            Unlike mmdet's ResNet, freezing a stage does not put its BatchNorms in eval mode:
            only `norm_eval` does.
        augmentation: optional `SemanticAugmentation` config of the style form, applied in
            training to the output of its stage (layer1, layer2 or layer3). CLIP the Gap's
            offsets go in the detector's neck instead, as the reference places them. With
            `norm_eval=False` the BatchNorms after the stage would take each batch's statistics
            and undo part of a restyling: the style configs set `norm_eval=True`.

    `forward(x)`: images (N, 3, H, W) -> `(layer3 map (N, C3, H/16, W/16),)`; C3 is
    `out_channels` (1024 for RN50/RN101). The map is float32 under autocast too: mmdet's RoI
    extractor casts the RoIs to the map's dtype, and mmcv's RoIAlign has no bfloat16 kernel
    (bf16 RoIs would also round to 4 px steps at 512-1024 px).
    """

    def __init__(
        self,
        clip: Mapping,
        frozen_stages: int = 2,
        norm_eval: bool = False,
        augmentation: dict | None = None,
        init_cfg=None,
    ):
        super().__init__(clip, V_A, norm_eval, init_cfg)
        self._freeze(frozen_stages)
        self.augmentation = MODELS.build(augmentation) if augmentation else None
        self.out_channels = self.dims.layer3_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (run_stages(self, V_A, x, self.augmentation).float(),)


def run_stages(parts: nn.Module, names: Sequence[str], x: torch.Tensor, augmentation=None) -> torch.Tensor:
    """The modules `names` of `parts` in turn, with `augmentation` (a `SemanticAugmentation`, or
    None) applied to the output of its stage."""
    for name in names:
        x = getattr(parts, name)(x)
        if augmentation is not None and name == augmentation.stage:
            (x,) = augmentation((x,))
    return x


class ClipRoIFeatures(NamedTuple):
    """What `CLIPResLayer4Head` gives the bbox head for R RoIs."""

    embedding: torch.Tensor  # (R, D): attnpool's output, the region's CLIP embedding (unnormalised): classify
    pooled: torch.Tensor  # (R, C4): layer4's output averaged over its S/2 x S/2 cells: regress boxes


@MODELS.register_module()
class CLIPResLayer4Head(_CLIPParts):
    """V_b of a CLIP ResNet as the `shared_head` of mmdet's `StandardRoIHead` (C4 layout).

    Takes the RoIAlign output on the layer3 map, (R, C3, S, S) with S = `roi_size` =
    image_size/16 of the CLIP model (14 for RN50/RN101, 8 for RN-tiny): only then does
    layer4's S/2 x S/2 output fit attnpool's positional embedding. Runs layer4 once and
    returns both of its uses as a `ClipRoIFeatures(embedding (R, D), pooled (R, C4))`;
    the bbox head receives that pair as its input. `embed_dim` is D, `out_channels` C4.

    Args:
        clip: the CLIP model, as for `CLIPResNetBackbone` (use the same one).
        norm_eval: as for `CLIPResNetBackbone`; default False (layer4's BatchNorms use
            batch statistics in training, as in the reference).
        attnpool_form: "token0" (default) runs attnpool as `attnpool_token0`: the same
            embedding for a fraction of the work; "all_tokens" runs open_clip's
            `AttentionPool2d` itself, which projects every token, as the reference does
            (for comparisons: benchmarks/gpu.py).
    """

    ATTNPOOL_FORMS = ("token0", "all_tokens")

    def __init__(self, clip: Mapping, norm_eval: bool = False, attnpool_form: str = "token0", init_cfg=None):
        if attnpool_form not in self.ATTNPOOL_FORMS:
            raise ValueError(f"attnpool_form must be one of {self.ATTNPOOL_FORMS}, got {attnpool_form!r}")
        super().__init__(clip, V_B, norm_eval, init_cfg)
        self.attnpool_form = attnpool_form
        self.roi_size = self.dims.roi_size
        self.embed_dim = self.dims.embed_dim
        self.out_channels = self.dims.layer4_channels

    def forward(self, x: torch.Tensor) -> ClipRoIFeatures:
        if tuple(x.shape[-2:]) != (self.roi_size, self.roi_size):
            raise ValueError(
                f"CLIPResLayer4Head needs {self.roi_size}x{self.roi_size} RoI features (image_size/16 of "
                f"this CLIP model), got {tuple(x.shape[-2:])}; set the RoI extractor's "
                f"output_size={self.roi_size}"
            )
        f = self.layer4(x)  # (R, C4, S/2, S/2)
        if self.attnpool_form == "token0":
            # attnpool's result, without the work for the tokens it discards (512 RoIs an image).
            embedding = attnpool_token0(self.attnpool, f)
        else:
            embedding = self.attnpool(f)
        return ClipRoIFeatures(embedding=embedding, pooled=f.mean(dim=(2, 3)))
