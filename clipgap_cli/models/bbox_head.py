"""CLIP the Gap's bbox head: classes by cosine to CLIP text embeddings, boxes from layer4's pooled map."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from mmdet.models.roi_heads.bbox_heads import BBoxHead
from mmdet.registry import MODELS
from torch import nn

from clipgap_cli.models.clip_resnet import ClipRoIFeatures
from clipgap_cli.models.config_tensors import decode_tensor
from clipgap_cli.stages.encode_prompts import read_text_embeddings

CLASSIFIERS = ("text", "linear")


@MODELS.register_module()
class CLIPBBoxHead(BBoxHead):
    """The bbox head of `StandardRoIHead` over `CLIPResLayer4Head`'s `ClipRoIFeatures`.

    Classification, from the region embedding e (R, D), into K classes and the background
    (index K, last, as mmdet wants), with softmax cross-entropy:
        classifier='text' (the method): logits = [logit_scale · cos(e, t_c)]_c ++ [0], with
            t_c the frozen CLIP text embeddings of the class prompts: no weight, no bias, no
            learnable background, as the reference;
        classifier='linear' (the ablation): a trainable Linear(D, K + 1).
    Regression: a class-specific Linear(C4, 4K) on the pooled layer4 output (R, C4), init
    normal std 0.001, bias 0; deltas with target_stds (0.1, 0.1, 0.2, 0.2); L1 loss.
    Losses, targets and predictions are mmdet `BBoxHead`'s.

    Args:
        num_classes: K.
        in_channels: C4, the channels of layer4 (2048 for RN50/RN101).
        embed_dim: D, CLIP's embedding size (RN101 512, RN50 1024).
        classifier: 'text' or 'linear'.
        class_embeddings: the text classifier's (K, D) class embeddings: the text-embeddings
            artifact of `clipgap encode-prompts` (`prompts/text_embeddings.pt`, its `classes`),
            or the embeddings themselves as nested lists or an `encode_tensor` dict (a config
            that needs no run directory, as `clipgap export` writes). L2-normalised and kept
            as the frozen buffer `class_embeddings`, saved in checkpoints. Not used by the
            linear classifier.
        logit_scale: the cosine's fixed scale (the reference: 100).

    `forward(x: ClipRoIFeatures)` -> `(cls_score (R, K + 1), bbox_pred (R, 4K))`.
    `set_vocabulary` changes the classes of a trained text classifier.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        embed_dim: int,
        classifier: str = "text",
        class_embeddings: str | Path | Sequence[Sequence[float]] | dict | None = None,
        logit_scale: float = 100.0,
        bbox_coder: dict | None = None,
        loss_cls: dict | None = None,
        loss_bbox: dict | None = None,
        init_cfg: dict | list | None = None,
    ):
        if classifier not in CLASSIFIERS:
            raise ValueError(f"CLIPBBoxHead's classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        if init_cfg is None:
            init_cfg = [dict(type="Normal", std=0.001, bias=0, override=dict(name="fc_reg"))]
            if classifier == "linear":
                init_cfg.append(dict(type="Normal", std=0.01, bias=0, override=dict(name="fc_cls")))
        super().__init__(
            with_avg_pool=False,
            roi_feat_size=1,  # the shared head pools: fc_reg takes (R, C4)
            with_cls=False,  # built below: its input is the embedding, not the C4 features
            in_channels=in_channels,
            num_classes=num_classes,
            bbox_coder=bbox_coder
            or dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_class_agnostic=False,
            loss_cls=loss_cls or dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
            loss_bbox=loss_bbox or dict(type="L1Loss", loss_weight=1.0),
            init_cfg=init_cfg,
        )
        self.with_cls = True
        self.classifier = classifier
        self.embed_dim = embed_dim
        self.logit_scale = logit_scale
        if classifier == "linear":
            self.fc_cls = nn.Linear(embed_dim, num_classes + 1)
        else:
            if class_embeddings is None:
                raise ValueError(
                    "CLIPBBoxHead's text classifier needs class_embeddings: a file or (K, D) lists"
                )
            embeddings = class_embeddings_of(class_embeddings, embed_dim, num_classes)
            self.register_buffer("class_embeddings", embeddings)  # (K, D)
        # Set by `set_vocabulary`; derived state, so not saved: checkpoints keep the trained classes.
        self.register_buffer("vocabulary", None, persistent=False)  # (K', D)
        self.register_buffer("reg_classes", None, persistent=False)  # (K',)

    def forward(self, x: ClipRoIFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        if self.classifier == "linear":
            cls_score = self.fc_cls(x.embedding)
        else:
            classes = self.class_embeddings if self.vocabulary is None else self.vocabulary
            cosine = F.normalize(x.embedding, dim=-1) @ classes.T  # (R, K)
            cls_score = torch.cat([self.logit_scale * cosine, cosine.new_zeros(len(cosine), 1)], dim=1)
        bbox_pred = self.fc_reg(x.pooled)  # (R, 4K)
        if self.reg_classes is not None:
            bbox_pred = bbox_pred.view(len(bbox_pred), -1, 4)[:, self.reg_classes].flatten(1)  # (R, 4K')
        return cls_score, bbox_pred

    @torch.no_grad()
    def set_vocabulary(
        self,
        class_embeddings: torch.Tensor | Sequence[Sequence[float]] | str | Path | None,
        reg_classes: torch.Tensor | Sequence[int] | None = None,
    ) -> None:
        """Detect other classes with the trained text classifier, without retraining (inference).

        `class_embeddings` (K', D): the new classes' text embeddings (as for the constructor);
        None returns to the trained classes. Scores then have K' + 1 columns and labels mean
        the new classes. Box regression is per trained class: new class c uses that of
        trained class `reg_classes[c]` (K',), by default the trained class whose text
        embedding is nearest (so a trained class keeps its own). The buffer
        `class_embeddings` and the checkpoint format stay as trained.
        """
        if self.classifier != "text":
            raise ValueError("only the text classifier can change its vocabulary; the linear one is trained")
        trained = len(self.class_embeddings)
        if class_embeddings is None:
            self.vocabulary = self.reg_classes = None
            self.num_classes = trained
            return
        vocabulary = class_embeddings_of(class_embeddings, self.embed_dim, count=None)
        vocabulary = vocabulary.to(self.class_embeddings.device)
        if reg_classes is None:
            reg_classes = (vocabulary @ self.class_embeddings.T).argmax(dim=1)
        reg_classes = torch.as_tensor(reg_classes, dtype=torch.long, device=vocabulary.device)
        if reg_classes.shape != (len(vocabulary),) or ((reg_classes < 0) | (reg_classes >= trained)).any():
            raise ValueError(f"reg_classes must give one trained class (0..{trained - 1}) per new class")
        self.vocabulary, self.reg_classes = vocabulary, reg_classes
        self.num_classes = len(vocabulary)


def _class_embeddings(source: torch.Tensor | Sequence[Sequence[float]] | dict | str | Path) -> torch.Tensor:
    """The (K, D) class embeddings of a text-embeddings artifact file, or given as a tensor, lists
    or an `encode_tensor` dict."""
    if not isinstance(source, str | Path):
        return decode_tensor(source)
    return read_text_embeddings(Path(source)).classes


def class_embeddings_of(
    source: torch.Tensor | Sequence[Sequence[float]] | str | Path, embed_dim: int, count: int | None
) -> torch.Tensor:
    """A text classifier's class embeddings (K, D), float and L2-normalised, from a text-embeddings
    artifact file or given as a tensor or lists; D checked against `embed_dim`, K against
    `count` unless it is None."""
    embeddings = _class_embeddings(source)
    shape = tuple(embeddings.shape)
    if len(shape) != 2 or shape[1] != embed_dim or shape[0] == 0 or count not in (None, shape[0]):
        expected = f"({'K' if count is None else count}, {embed_dim})"
        raise ValueError(
            f"the class embeddings must be {expected} (classes x CLIP embedding size), got "
            f"{shape}: they were made for other classes or another CLIP model"
        )
    return F.normalize(embeddings.float(), dim=-1)
