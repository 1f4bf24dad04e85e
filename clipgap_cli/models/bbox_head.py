"""CLIP the Gap's bbox head: classes by cosine to CLIP text embeddings, boxes from layer4's pooled map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmdet.models.roi_heads.bbox_heads import BBoxHead
from mmdet.registry import MODELS
from torch import nn

from clipgap_cli.models.clip_resnet import ClipRoIFeatures
from clipgap_cli.models.text_classifier import ClassEmbeddings, TextClassifier

CLASSIFIERS = ("text", "linear")


@MODELS.register_module()
class CLIPBBoxHead(TextClassifier, BBoxHead):
    """The bbox head of `StandardRoIHead` over `CLIPResLayer4Head`'s `ClipRoIFeatures`.

    Classification, from the region embedding e (R, D), into K classes and the background
    (index K, last, as mmdet wants), with softmax cross-entropy:
        classifier='text' (the method): the `TextClassifier` logits = [logit_scale · cos(e, t_c)]_c
            ++ [0], with t_c the frozen CLIP text embeddings of the class prompts: no weight,
            no bias, no learnable background, as the reference;
        classifier='linear' (the ablation): a trainable Linear(D, K + 1).
    Regression: a class-specific Linear(C4, 4K) on the pooled layer4 output (R, C4), init
    normal std 0.001, bias 0; deltas with target_stds (0.1, 0.1, 0.2, 0.2); L1 loss.
    Losses, targets and predictions are mmdet `BBoxHead`'s.

    Args:
        num_classes: K.
        in_channels: C4, the channels of layer4 (2048 for RN50/RN101).
        embed_dim: D, CLIP's embedding size (RN101 512, RN50 1024).
        classifier: 'text' or 'linear'.
        class_embeddings: the text classifier's (K, D) class embeddings (`ClassEmbeddings`: the
            run's text-embeddings artifact, or the values). L2-normalised and kept as the
            frozen buffer `class_embeddings`, saved in checkpoints. Not used by the linear
            classifier.
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
        class_embeddings: ClassEmbeddings | None = None,
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
            self.init_text_classifier(class_embeddings, embed_dim, num_classes, logit_scale, background=True)
        # Set by `set_vocabulary`; derived state, so not saved: checkpoints keep the trained classes.
        self.register_buffer("reg_classes", None, persistent=False)  # (K',)

    def forward(self, x: ClipRoIFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        if self.classifier == "linear":
            cls_score = self.fc_cls(x.embedding)
        else:
            cls_score = self.text_logits(x.embedding)  # (R, K + 1)
        bbox_pred = self.fc_reg(x.pooled)  # (R, 4K)
        if self.reg_classes is not None:
            bbox_pred = bbox_pred.view(len(bbox_pred), -1, 4)[:, self.reg_classes].flatten(1)  # (R, 4K')
        return cls_score, bbox_pred

    @torch.no_grad()
    def set_vocabulary(
        self,
        class_embeddings: ClassEmbeddings | None,
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
            super().set_vocabulary(None)
            self.reg_classes = None
            self.num_classes = trained
            return
        previous = self.vocabulary
        super().set_vocabulary(class_embeddings)
        vocabulary = self.vocabulary
        if reg_classes is None:
            reg_classes = (vocabulary @ self.class_embeddings.T).argmax(dim=1)
        reg_classes = torch.as_tensor(reg_classes, dtype=torch.long, device=vocabulary.device)
        if reg_classes.shape != (len(vocabulary),) or ((reg_classes < 0) | (reg_classes >= trained)).any():
            self.vocabulary = previous
            raise ValueError(f"reg_classes must give one trained class (0..{trained - 1}) per new class")
        self.reg_classes = reg_classes
        self.num_classes = len(vocabulary)
