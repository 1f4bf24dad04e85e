"""GridCLIP (Lin & Gong, 2023) as MMDetection parts: a one-stage FCOS detector on CLIP's whole ResNet
whose grid cells are classified by cosine to CLIP text embeddings (grid-level alignment) and
whose pooled grid is pulled towards the frozen CLIP image embedding in training (image-level
alignment). docs/method.md, "GridCLIP", says which parts are the paper's and which are ours.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from mmdet.models.dense_heads import FCOSHead
from mmdet.models.detectors import FCOS
from mmdet.registry import MODELS
from torch import nn

from clipgap_cli.clip.model import load_clip
from clipgap_cli.clip.split import STEM, attnpool_dense, v_a, v_b
from clipgap_cli.models.bbox_head import class_embeddings_of
from clipgap_cli.models.clip_resnet import _STAGES, _CLIPParts

DENSE = ("v_proj", "c_proj")  # the parts of attnpool that the dense embeddings use


@MODELS.register_module()
class GridCLIPBackbone(_CLIPParts):
    """The whole CLIP ResNet as a backbone for an FPN: images -> (layer2, layer3, dense CLIP embeddings).

    Copies stem..layer4 and attnpool's `v_proj` and `c_proj` (not its query, key or
    positional embedding, which the dense embeddings do not use) from CLIP `clip`.

    Args:
        clip: the CLIP model, `dict(name='RN101', pretrained='openai')`, as for `CLIPResNetBackbone`.
        frozen_stages: as for `CLIPResNetBackbone`; default 1 (stem and layer1 frozen, as
            mmdet's one-stage detectors: layer2 feeds the FPN and trains).
        norm_eval: as for `CLIPResNetBackbone`; default True (frozen BatchNorm statistics,
            as mmdet's one-stage detectors).
        augmentation: optional `SemanticAugmentation` config, added to the layer3 map in
            training (CLIP the Gap's augmentation on GridCLIP); it reaches the FPN's stride-16
            input and, through layer4, the dense embeddings.

    `forward(x)`: images (N, 3, H, W) -> `(layer2 (N, C2, H/8, W/8), layer3 (N, C3, H/16, W/16),
    dense embeddings (N, D, H/32, W/32))`; `out_channels` is (C2, C3, D).
    """

    def __init__(
        self,
        clip: Mapping,
        frozen_stages: int = 1,
        norm_eval: bool = True,
        augmentation: dict | None = None,
        init_cfg=None,
    ):
        super().__init__(clip, (*STEM, "layer1", "layer2", "layer3", "layer4"), norm_eval, init_cfg)
        if not -1 <= frozen_stages < len(_STAGES):
            raise ValueError(f"frozen_stages must be -1..{len(_STAGES) - 1}, got {frozen_stages}")
        attnpool = load_clip(clip["name"], clip.get("pretrained")).visual.attnpool
        # open_clip's names, so that the state dict reads as CLIP's: attnpool.v_proj.weight.
        self.attnpool = nn.ModuleDict({name: copy.deepcopy(getattr(attnpool, name)) for name in DENSE})
        self.attnpool.requires_grad_(True)
        for stage in _STAGES[: frozen_stages + 1]:
            for name in stage:
                getattr(self, name).requires_grad_(False)
        self.frozen_stages = frozen_stages
        self.augmentation = MODELS.build(augmentation) if augmentation else None
        dims = self.dims
        self.out_channels = (dims.layer2_channels, dims.layer3_channels, dims.embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for name in (*STEM, "layer1", "layer2"):
            x = getattr(self, name)(x)
        layer2 = x
        layer3 = self.layer3(layer2)
        if self.augmentation is not None:
            (layer3,) = self.augmentation((layer3,))
        return layer2, layer3, attnpool_dense(self.attnpool, self.layer4(layer3))


@MODELS.register_module()
class GridCLIPHead(FCOSHead):
    """FCOS's head with a text classifier: grid-level alignment.

    The classification branch ends in `conv_cls`, a 3x3 convolution to D channels (CLIP's
    embedding space) instead of K; each location's embedding e scores class c as
        logit_c = cos(e, t_c) / temperature + bias,
    t_c the frozen text embedding of class c, `bias` one learnable scalar shared by all
    classes (initialised to the focal loss's prior, log(p / (1 - p)), p = `prior_prob`). Both
    are class-independent, so a new vocabulary needs no retraining. Regression, centerness,
    targets, losses and post-processing are FCOS's; the classification loss must be a sigmoid
    one (focal loss).

    Args:
        num_classes: K.
        in_channels: the FPN's channels.
        embed_dim: D, CLIP's embedding size (RN50 1024, RN101 512).
        class_embeddings: the (K, D) class text embeddings: the run's text-embeddings
            artifact (`prompts/text_embeddings.pt`) or nested lists, as for `CLIPBBoxHead`;
            kept L2-normalised as the frozen buffer `class_embeddings`, saved in checkpoints.
        temperature: τ of the cosine (default 0.07, CLIP's initial temperature).
        prior_prob: the initial probability of every class at every location.
        **kwargs: FCOSHead's.

    `set_vocabulary` changes the classes without retraining.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        embed_dim: int,
        class_embeddings: str | Path | Sequence[Sequence[float]] | dict | None = None,
        temperature: float = 0.07,
        prior_prob: float = 0.01,
        init_cfg: dict | list | None = None,
        **kwargs,
    ):
        self.embed_dim = embed_dim  # `_init_predictor`, called by the base constructor, needs it
        super().__init__(
            num_classes,
            in_channels,
            init_cfg=init_cfg or dict(type="Normal", layer="Conv2d", std=0.01),
            **kwargs,
        )
        if not self.use_sigmoid_cls:
            raise ValueError("GridCLIPHead scores each class alone: its loss_cls must use a sigmoid")
        if class_embeddings is None:
            raise ValueError("GridCLIPHead needs class_embeddings: a file or (K, D) lists")
        if temperature <= 0 or not 0 < prior_prob < 1:
            raise ValueError("GridCLIPHead needs temperature > 0 and 0 < prior_prob < 1")
        self.register_buffer(
            "class_embeddings", class_embeddings_of(class_embeddings, embed_dim, num_classes)
        )
        # Set by `set_vocabulary`; derived state, so not saved: checkpoints keep the trained classes.
        self.register_buffer("vocabulary", None, persistent=False)  # (K', D)
        self.temperature = temperature
        self.bias = nn.Parameter(torch.tensor(math.log(prior_prob / (1 - prior_prob))))

    def _init_predictor(self) -> None:
        super()._init_predictor()
        self.conv_cls = nn.Conv2d(self.feat_channels, self.embed_dim, 3, padding=1)

    def forward_single(self, x, scale, stride) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One FPN level (N, C, H, W) -> logits (N, K, H, W), boxes (N, 4, H, W), centerness (N, 1, H, W)."""
        embedding, bbox_pred, centerness = super().forward_single(x, scale, stride)
        return self.text_logits(embedding), bbox_pred, centerness

    def text_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """Grid-level alignment: location embeddings (N, D, H, W) -> logits (N, K, H, W)."""
        classes = self.class_embeddings if self.vocabulary is None else self.vocabulary
        cosine = torch.einsum("ndhw,kd->nkhw", F.normalize(embedding, dim=1), classes.to(embedding.dtype))
        return cosine / self.temperature + self.bias

    @torch.no_grad()
    def set_vocabulary(self, class_embeddings: torch.Tensor | Sequence[Sequence[float]] | str | Path | None):
        """Detect other classes without retraining (inference): `class_embeddings` (K', D) as for
        the constructor, or None for the trained classes. Labels then index the new classes.
        The buffer `class_embeddings` and the checkpoint format stay as trained."""
        if class_embeddings is None:
            self.vocabulary = None
        else:
            vocabulary = class_embeddings_of(class_embeddings, self.embed_dim, count=None)
            self.vocabulary = vocabulary.to(self.class_embeddings.device)
        self.num_classes = self.cls_out_channels = len(
            self.class_embeddings if self.vocabulary is None else self.vocabulary
        )


@MODELS.register_module()
class GridCLIP(FCOS):
    """mmdet's FCOS detector with GridCLIP's image-level alignment loss in training.

    Args:
        image_alignment: `dict(clip=dict(name=..., pretrained=...), loss_weight=1.0)`: the
            frozen CLIP teacher (the backbone's CLIP model) and the weight of
            `loss_image_alignment`; None or `loss_weight=0` turns the loss off.
        the rest: FCOS's.

    The teacher is not part of the model: it is loaded (`load_clip`, cached and frozen) the
    first time the loss needs it, never saved in checkpoints, never used at inference; a model
    built without its weights (`pretrained=None`) and loaded from a checkpoint predicts as
    the trained one.
    """

    def __init__(self, backbone, neck, bbox_head, image_alignment: dict | None = None, **kwargs):
        super().__init__(backbone=backbone, neck=neck, bbox_head=bbox_head, **kwargs)
        alignment = dict(image_alignment or {})
        self.alignment_weight = float(alignment.get("loss_weight", 1.0)) if alignment else 0.0
        self.teacher_clip = alignment.get("clip")
        if self.alignment_weight and not self.teacher_clip:
            raise ValueError("GridCLIP's image_alignment needs clip=dict(name=..., pretrained=...)")
        # A plain attribute, not a submodule: outside the state dict, the optimiser and DDP.
        object.__setattr__(self, "_teacher", None)

    def loss(self, batch_inputs: torch.Tensor, batch_data_samples: list) -> dict:
        features = self.backbone(batch_inputs)
        losses = self.bbox_head.loss(self.neck(features), batch_data_samples)
        if self.alignment_weight:
            shapes = [sample.metainfo["img_shape"][:2] for sample in batch_data_samples]
            student = pooled_grid(
                features[-1], shapes, stride=batch_inputs.shape[-1] // features[-1].shape[-1]
            )
            teacher = self.teacher_embedding(batch_inputs, shapes)
            losses["loss_image_alignment"] = self.alignment_weight * image_alignment_loss(student, teacher)
        return losses

    @torch.no_grad()
    def teacher_embedding(self, images: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """The frozen CLIP image embedding (N, D) of each whole image (its unpadded `shapes` (h, w)
        of the CLIP-normalised batch (N, 3, H, W)), resized to CLIP's input size."""
        teacher = self._teacher_visual(images.device)
        size = (teacher.image_size, teacher.image_size)  # a ModifiedResNet's input is square
        resized = torch.cat([
            F.interpolate(image[None, :, :h, :w], size, mode="bilinear", align_corners=False, antialias=True)
            for image, (h, w) in zip(images, shapes, strict=True)
        ])  # fmt: skip
        return v_b(teacher, v_a(teacher, resized.to(images.dtype)))

    def _teacher_visual(self, device: torch.device) -> nn.Module:
        teacher = self._teacher
        if teacher is None or next(teacher.parameters()).device != device:
            visual = load_clip(self.teacher_clip["name"], self.teacher_clip.get("pretrained")).visual
            # The shared model stays on the CPU; another device gets its own frozen copy.
            teacher = visual if device.type == "cpu" else copy.deepcopy(visual).to(device)
            object.__setattr__(self, "_teacher", teacher)
        return teacher


def pooled_grid(dense: torch.Tensor, shapes: Sequence[tuple[int, int]], stride: int) -> torch.Tensor:
    """The image-level representation: each image's dense embeddings (N, D, h, w) averaged over
    the cells that cover its unpadded (h, w) pixels (`shapes`, at `stride` pixels a cell) -> (N, D)."""
    mask = dense.new_zeros(len(dense), 1, *dense.shape[-2:])
    for n, (h, w) in enumerate(shapes):
        mask[n, :, : math.ceil(h / stride), : math.ceil(w / stride)] = 1
    return (dense * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3))


def image_alignment_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Image-level alignment: (N, D) student and teacher embeddings -> a scalar,
    mean(1 - cos(s, t)) + mean|ŝ - t̂| with ŝ, t̂ L2-normalised (the distance optimize-augs uses).
    Zero exactly when each pair points the same way; no gradient reaches the teacher."""
    s, t = F.normalize(student, dim=-1), F.normalize(teacher.detach(), dim=-1)
    return (1 - (s * t).sum(dim=-1)).mean() + F.l1_loss(s, t)
