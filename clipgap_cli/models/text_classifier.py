"""The text classifier both detectors' heads share: scores by cosine to frozen CLIP text embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipgap_cli.artifacts import decode_tensor, read_text_embeddings

ClassEmbeddings = torch.Tensor | Sequence[Sequence[float]] | dict | str | Path
"""Class text embeddings (K, D): the text-embeddings artifact of `clipgap encode-prompts`
(`prompts/text_embeddings.pt`, its `classes`), or the embeddings themselves as a tensor,
nested lists or an `encode_tensor` dict (a config that needs no run directory, as
`clipgap export` writes)."""


class TextClassifier(nn.Module):
    """Classification by cosine to the class text embeddings t_c, (K, D):

        logit_c = scale · cos(e, t_c) + bias,  and with `background`, a last logit 0

    for an embedding e. Nothing in it depends on the classes but t_c, so `set_vocabulary`
    detects other classes without retraining.

    A head mixes it in (as its first base) and calls `init_text_classifier`; its state keeps
    the head's own names in checkpoints: the frozen buffer `class_embeddings` (K, D) and, if
    learnt, the scalar parameter `bias`.
    """

    def init_text_classifier(
        self,
        class_embeddings: ClassEmbeddings,
        embed_dim: int,
        num_classes: int,
        scale: float,
        bias: float | None = None,
        background: bool = False,
        dim: int = -1,
    ) -> None:
        """`class_embeddings` (K, D), kept L2-normalised; `scale` fixed; `bias` None for none,
        else the initial value of a learnt one; `background`: add the background logit 0;
        `dim`: the axis of D in the embeddings the head scores ((R, D): -1, (N, D, H, W): 1)."""
        self.register_buffer(
            "class_embeddings", class_embeddings_of(class_embeddings, embed_dim, num_classes)
        )
        # Set by `set_vocabulary`; derived state, so not saved: checkpoints keep the trained classes.
        self.register_buffer("vocabulary", None, persistent=False)  # (K', D)
        self.text_scale = scale
        self.bias = None if bias is None else nn.Parameter(torch.tensor(bias))
        self.background = background
        self.text_dim = dim

    @property
    def classes(self) -> torch.Tensor:
        """The embeddings (K, D) of the classes detected now: the trained ones or the vocabulary's."""
        return self.class_embeddings if self.vocabulary is None else self.vocabulary

    def text_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """Embeddings with D along the head's axis ((R, D), or (N, D, H, W)) -> logits with
        K (+ 1 for the background) along that axis."""
        dim = self.text_dim
        e = F.normalize(embedding.movedim(dim, -1), dim=-1)
        logits = self.text_scale * (e @ self.classes.to(e.dtype).T)  # (..., K)
        if self.bias is not None:
            logits = logits + self.bias
        if self.background:
            logits = torch.cat([logits, logits.new_zeros(*logits.shape[:-1], 1)], dim=-1)
        return logits.movedim(-1, dim)

    @torch.no_grad()
    def set_vocabulary(self, class_embeddings: ClassEmbeddings | None) -> None:
        """Detect other classes without retraining (inference): `class_embeddings` (K', D), as
        for `init_text_classifier`, or None for the trained classes. Logits then have K'
        class columns, and labels index the new classes. The buffer `class_embeddings` and the
        checkpoint format stay as trained."""
        if class_embeddings is None:
            self.vocabulary = None
        else:
            vocabulary = class_embeddings_of(class_embeddings, self.class_embeddings.shape[1], count=None)
            self.vocabulary = vocabulary.to(self.class_embeddings.device)


def class_embeddings_of(source: ClassEmbeddings, embed_dim: int, count: int | None) -> torch.Tensor:
    """Class embeddings (K, D), float and L2-normalised, from a text-embeddings artifact file or
    given as a tensor, lists or an `encode_tensor` dict; D checked against `embed_dim`, K
    against `count` unless it is None."""
    if isinstance(source, str | Path):
        embeddings = read_text_embeddings(Path(source)).classes
    else:
        embeddings = decode_tensor(source)
    shape = tuple(embeddings.shape)
    if len(shape) != 2 or shape[1] != embed_dim or shape[0] == 0 or count not in (None, shape[0]):
        expected = f"({'K' if count is None else count}, {embed_dim})"
        raise ValueError(
            f"the class embeddings must be {expected} (classes x CLIP embedding size), got "
            f"{shape}: they were made for other classes or another CLIP model"
        )
    return F.normalize(embeddings.float(), dim=-1)
