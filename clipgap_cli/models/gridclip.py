"""GridCLIP (Lin & Gong, 2023) as MMDetection parts: a one-stage FCOS detector on CLIP's whole ResNet
whose grid cells are classified by cosine to CLIP text embeddings (grid-level alignment) and
whose pooled grid is pulled towards the frozen CLIP image embedding in training (image-level
alignment). docs/method.md, "GridCLIP", says which parts are the paper's and which are ours.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from mmdet.models.dense_heads import FCOSHead
from mmdet.models.detectors import FCOS
from mmdet.registry import MODELS
from torch import nn

from clipgap_cli.clip.model import load_clip
from clipgap_cli.clip.split import STEM, attnpool_dense, v_a, v_b
from clipgap_cli.models.clip_resnet import _CLIPParts, run_stages
from clipgap_cli.models.text_classifier import ClassEmbeddings, TextClassifier

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
        augmentation: optional `SemanticAugmentation` config, applied in training to the
            output of its stage: CLIP the Gap's offsets to the layer3 map (the FPN's stride-16
            input and, through layer4, the dense embeddings), the style form's statistics at
            layer1, layer2 or layer3 (everything after it).

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
        attnpool = load_clip(clip["name"], clip.get("pretrained")).visual.attnpool
        # open_clip's names, so that the state dict reads as CLIP's: attnpool.v_proj.weight.
        self.attnpool = nn.ModuleDict({name: copy.deepcopy(getattr(attnpool, name)) for name in DENSE})
        self.attnpool.requires_grad_(True)
        self._freeze(frozen_stages)
        self.augmentation = MODELS.build(augmentation) if augmentation else None
        dims = self.dims
        self.out_channels = (dims.layer2_channels, dims.layer3_channels, dims.embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        layer2 = run_stages(self, (*STEM, "layer1", "layer2"), x, self.augmentation)
        layer3 = run_stages(self, ("layer3",), layer2, self.augmentation)
        return layer2, layer3, attnpool_dense(self.attnpool, self.layer4(layer3))


@MODELS.register_module()
class GridCLIPHead(TextClassifier, FCOSHead):
    """FCOS's head with a text classifier: grid-level alignment.

    The classification branch ends in `conv_cls`, a 3x3 convolution to D channels (CLIP's
    embedding space) instead of K; each location's embedding e scores class c as the
    `TextClassifier` does, with scale 1 / temperature and a learnt bias:
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
        class_embeddings: the (K, D) class text embeddings (`ClassEmbeddings`), as for
            `CLIPBBoxHead`; kept L2-normalised as the frozen buffer `class_embeddings`, saved
            in checkpoints.
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
        class_embeddings: ClassEmbeddings | None = None,
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
        self.temperature = temperature
        prior_logit = math.log(prior_prob / (1 - prior_prob))
        self.init_text_classifier(
            class_embeddings, embed_dim, num_classes, 1 / temperature, bias=prior_logit, dim=1
        )

    def _init_predictor(self) -> None:
        super()._init_predictor()
        self.conv_cls = nn.Conv2d(self.feat_channels, self.embed_dim, 3, padding=1)

    def forward_single(self, x, scale, stride) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One FPN level (N, C, H, W) -> logits (N, K, H, W), boxes (N, 4, H, W), centerness (N, 1, H, W)."""
        embedding, bbox_pred, centerness = super().forward_single(x, scale, stride)
        return self.text_logits(embedding), bbox_pred, centerness  # grid-level alignment

    @torch.no_grad()
    def set_vocabulary(self, class_embeddings: ClassEmbeddings | None) -> None:
        """`TextClassifier.set_vocabulary`; the head's outputs follow the classes."""
        super().set_vocabulary(class_embeddings)
        self.num_classes = self.cls_out_channels = len(self.classes)


@MODELS.register_module()
class GridCLIP(FCOS):
    """mmdet's FCOS detector with GridCLIP's image-level alignment loss in training.

    Args:
        image_alignment: `dict(clip=dict(name=..., pretrained=...), loss_weight=1.0,
            regions_per_image=0)`: the frozen CLIP teacher (the backbone's CLIP model), the
            weight of `loss_image_alignment` (the whole images), and how many ground-truth
            regions of each image, the largest, are aligned too (`loss_region_alignment`, same
            weight: each region's pooled cells against the teacher's embedding of its crop;
            0, the default, aligns whole images only). None or `loss_weight=0` turns both off.
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
        self.alignment_regions = int(alignment.get("regions_per_image", 0))
        self.teacher_clip = alignment.get("clip")
        if self.alignment_weight and not self.teacher_clip:
            raise ValueError("GridCLIP's image_alignment needs clip=dict(name=..., pretrained=...)")
        if self.alignment_regions < 0:
            raise ValueError("GridCLIP's image_alignment.regions_per_image must be 0 or more")
        # A plain attribute, not a submodule: outside the state dict, the optimiser and DDP.
        object.__setattr__(self, "_teacher", None)

    def loss(self, batch_inputs: torch.Tensor, batch_data_samples: list) -> dict:
        features = self.backbone(batch_inputs)
        losses = self.bbox_head.loss(self.neck(features), batch_data_samples)
        if self.alignment_weight:
            dense = features[-1]
            stride = batch_inputs.shape[-1] // dense.shape[-1]
            whole = [
                (n, 0.0, 0.0, float(w), float(h))
                for n, (h, w) in enumerate(s.metainfo["img_shape"][:2] for s in batch_data_samples)
            ]
            losses["loss_image_alignment"] = self.alignment_weight * self.alignment_loss(
                batch_inputs, dense, whole, stride
            )
            if self.alignment_regions:
                regions = largest_regions(batch_data_samples, self.alignment_regions)
                # Logged at every step: 0 for a batch without boxes.
                region_loss = (
                    self.alignment_loss(batch_inputs, dense, regions, stride)
                    if regions
                    else dense.new_zeros(())
                )
                losses["loss_region_alignment"] = self.alignment_weight * region_loss
        return losses

    def alignment_loss(
        self, images: torch.Tensor, dense: torch.Tensor, regions: Sequence[Region], stride: int
    ) -> torch.Tensor:
        """`image_alignment_loss` between each region's pooled grid (`pooled_regions`) and the
        teacher's embedding of its crop (`teacher_embedding`)."""
        student = pooled_regions(dense, regions, stride)
        return image_alignment_loss(student, self.teacher_embedding(images, regions))

    @torch.no_grad()
    def teacher_embedding(self, images: torch.Tensor, regions: Sequence[Region]) -> torch.Tensor:
        """The frozen CLIP image embedding (R, D) of each region's crop of the CLIP-normalised
        batch (N, 3, H, W), resized to CLIP's input size; a whole image is the region
        (n, 0, 0, w, h) of its unpadded size."""
        teacher = self._teacher_visual(images.device)
        size = (teacher.image_size, teacher.image_size)  # a ModifiedResNet's input is square
        crops = []
        for n, x1, y1, x2, y2 in regions:
            (c0, c1), (r0, r1) = _span(x1, x2, 1, images.shape[-1]), _span(y1, y2, 1, images.shape[-2])
            crop = images[int(n), None, :, r0:r1, c0:c1]
            crops.append(F.interpolate(crop, size, mode="bilinear", align_corners=False, antialias=True))
        return v_b(teacher, v_a(teacher, torch.cat(crops).to(images.dtype)))

    def _teacher_visual(self, device: torch.device) -> nn.Module:
        teacher = self._teacher
        if teacher is None or next(teacher.parameters()).device != device:
            visual = load_clip(self.teacher_clip["name"], self.teacher_clip.get("pretrained")).visual
            # The shared model stays on the CPU; another device gets its own frozen copy.
            teacher = visual if device.type == "cpu" else copy.deepcopy(visual).to(device)
            object.__setattr__(self, "_teacher", teacher)
        return teacher


Region = tuple[int, float, float, float, float]
"""`(image index n, x1, y1, x2, y2)` in the batch's input pixels."""


def largest_regions(samples: Sequence, count: int) -> list[Region]:
    """The `count` largest ground-truth boxes of each image (fewer if it has fewer)."""
    regions = []
    for n, sample in enumerate(samples):
        boxes = sample.gt_instances.bboxes
        boxes = getattr(boxes, "tensor", boxes)  # (G, 4), a tensor or mmdet's box type
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for i in areas.argsort(descending=True)[:count].tolist():
            regions.append((n, *boxes[i].tolist()))
    return regions


def pooled_regions(dense: torch.Tensor, regions: Sequence[Region], stride: int) -> torch.Tensor:
    """The grid representation of regions: the mean of the dense embeddings (N, D, h, w) over
    the cells (of `stride` pixels) each region overlaps, at least one -> (R, D)."""
    pooled = []
    for n, x1, y1, x2, y2 in regions:
        (c0, c1), (r0, r1) = _span(x1, x2, stride, dense.shape[-1]), _span(y1, y2, stride, dense.shape[-2])
        pooled.append(dense[int(n), :, r0:r1, c0:c1].mean(dim=(1, 2)))
    return torch.stack(pooled)


def _span(start: float, end: float, step: int, limit: int) -> tuple[int, int]:
    """The cells [first, last) of `step` pixels that [start, end) overlaps, at least one, within `limit`."""
    first = min(max(int(start // step), 0), limit - 1)
    return first, max(first + 1, min(limit, math.ceil(end / step)))


def image_alignment_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Image-level alignment: (N, D) student and teacher embeddings -> a scalar,
    mean(1 - cos(s, t)) + mean|ŝ - t̂| with ŝ, t̂ L2-normalised (the distance optimize-augs uses).
    Zero exactly when each pair points the same way; no gradient reaches the teacher."""
    s, t = F.normalize(student, dim=-1), F.normalize(teacher.detach(), dim=-1)
    return (1 - (s * t).sum(dim=-1)).mean() + F.l1_loss(s, t)
