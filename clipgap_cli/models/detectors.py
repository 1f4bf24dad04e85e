"""clipgap's detectors by type: where each one's config takes what a run decides (its CLIP model
and sizes, the class text embeddings, the semantic augmentations), and building one from a
config and a checkpoint.

`train` fills a config from the run's artifacts (`fill_model`), `export` replaces those
artifacts by the trained values (`self_contained_model`), `evaluate` and `predict` build the
detector (`build_detector`). A new detector type is one more `LAYOUTS` entry.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config

from clipgap_cli.artifacts import augmentation_form, encode_tensor, read_offsets
from clipgap_cli.clip.split import VisualDims
from clipgap_cli.errors import ClipgapError
from clipgap_cli.models.semantic_augmentation import SemanticAugmentation


@dataclass(frozen=True)
class Layout:
    """Where a detector's model config takes the run's values. Paths are dotted, inside the
    model config; they name the same modules in the state dict (the config's nesting is the
    model's)."""

    clips: tuple[str, ...]  # every `clip=dict(name, pretrained)`; those whose parent is absent are skipped
    text_head: str  # the head with `num_classes`, `embed_dim` and `class_embeddings`
    augmentations: tuple[str, ...]  # where a `SemanticAugmentation` may sit
    set_sizes: Callable[[Any, VisualDims], None]  # the channels and sizes that follow from CLIP


def _faster_rcnn_sizes(m: Any, dims: VisualDims) -> None:
    """The RoI size S and C3 / C4 of CLIP the Gap's C4 Faster R-CNN."""
    m.roi_head.bbox_roi_extractor.roi_layer.output_size = dims.roi_size
    m.roi_head.bbox_roi_extractor.out_channels = dims.layer3_channels
    m.rpn_head.in_channels = m.rpn_head.feat_channels = dims.layer3_channels
    m.roi_head.bbox_head.in_channels = dims.layer4_channels


def _gridclip_sizes(m: Any, dims: VisualDims) -> None:
    """The FPN's inputs (C2, C3, D) of GridCLIP."""
    m.neck.in_channels = [dims.layer2_channels, dims.layer3_channels, dims.embed_dim]


LAYOUTS = {
    # CLIP the Gap: V_a as the backbone, V_b as the RoI shared head, the offsets as the neck
    # (a style inside the backbone, at its stage).
    "FasterRCNN": Layout(
        clips=("backbone.clip", "roi_head.shared_head.clip"),
        text_head="roi_head.bbox_head",
        augmentations=("neck", "backbone.augmentation"),
        set_sizes=_faster_rcnn_sizes,
    ),
    # GridCLIP: the whole CLIP ResNet as the backbone, and the image-level alignment's teacher.
    "GridCLIP": Layout(
        clips=("backbone.clip", "image_alignment.clip"),
        text_head="bbox_head",
        augmentations=("backbone.augmentation",),
        set_sizes=_gridclip_sizes,
    ),
}


def layout(model: Mapping) -> Layout:
    """The layout of a model config's detector type; KeyError for a type clipgap has none of."""
    return LAYOUTS[model.get("type")]


def fill_model(
    m: Any,
    clip: dict,
    dims: VisualDims,
    num_classes: int,
    class_embeddings: str | list | dict,
    offsets: str | None,
) -> None:
    """Complete a detector config for CLIP `clip` (its `dims`) and `num_classes` classes whose
    text embeddings are `class_embeddings` (a file, (K, D) lists or `encode_tensor`'s dict), with the semantic
    augmentations of the file `offsets` where the config has them. Raises AttributeError,
    KeyError or TypeError on a config that has not the parts of one of clipgap's detectors."""
    parts = layout(m)
    for path in parts.clips:
        parent, _, key = path.rpartition(".")
        if _get(m, parent):  # GridCLIP without image_alignment has no teacher
            _get(m, parent)[key] = clip
    parts.set_sizes(m, dims)
    head = _get(m, parts.text_head)
    head.embed_dim, head.num_classes, head.class_embeddings = dims.embed_dim, num_classes, class_embeddings
    augmentation = augmentation_of(m)
    if augmentation is not None:
        augmentation.offsets = offsets
        if offsets is not None and augmentation_form(content := read_offsets(Path(offsets))) == "style":
            if augmentation is _get(m, "neck"):
                raise ClipgapError(
                    f"{offsets} holds styles (optimize-augs --form style), which act inside the backbone; "
                    "this config adds offsets at layer3: train with a _style config"
                )
            augmentation.stage = content["stage"]  # written out: an exported config needs no file


def augmentation_of(m: Mapping) -> Any:
    """The config's `SemanticAugmentation` part, or None (an ablation without it)."""
    for path in layout(m).augmentations:
        part = _get(m, path)
        if isinstance(part, Mapping) and part.get("type") == SemanticAugmentation.__name__:
            return part
    return None


def self_contained_model(m: Mapping, state_dict: Mapping[str, torch.Tensor]) -> dict:
    """A model config (as plain dicts) that needs no run file: the class text embeddings and the
    augmentations' means are the trained model's buffers (`<head>.class_embeddings`,
    `<augmentation>.offset_means`) as `encode_tensor` text, and every CLIP is built without
    weights (the checkpoint holds them)."""
    model = m.to_dict() if hasattr(m, "to_dict") else dict(m)
    parts = layout(model)
    for path in parts.clips:
        clip = _get(model, path)
        if clip is not None:
            clip["pretrained"] = None
    head = _get(model, parts.text_head)
    # None where the head keeps no embeddings (the linear classifier ignores them).
    buffer = state_dict.get(f"{parts.text_head}.class_embeddings")
    head["class_embeddings"] = None if buffer is None else encode_tensor(buffer)
    augmentation = augmentation_of(model)
    if augmentation is not None:
        path = next(p for p in parts.augmentations if _get(model, p) is augmentation)
        names = ("style_means", "style_stds") if f"{path}.style_means" in state_dict else ("offset_means",)
        missing = [n for n in names if f"{path}.{n}" not in state_dict]
        if missing:
            raise ClipgapError(
                f"the checkpoint has no {path}.{missing[0]} for the config's augmentations; "
                "it was not trained with this config"
            )
        augmentation["offsets"] = None
        augmentation.update({n: encode_tensor(state_dict[f"{path}.{n}"]) for n in names})
    return model


def _get(m: Any, path: str) -> Any:
    """The part of a config at a dotted path, or None where a part on the way is absent."""
    for key in filter(None, path.split(".")):
        m = m.get(key) if isinstance(m, Mapping) else None
    return m


def build_detector(config: Path | Config, checkpoint: Path, device: str):
    """The detector of a config (a file or loaded) with a checkpoint's weights, in eval mode;
    and the config."""
    from mmdet.apis import init_detector

    cfg = config if isinstance(config, Config) else Config.fromfile(str(config))
    try:
        # mmengine prints the checkpoint loader's name ("Loads checkpoint by ...") on stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            model = init_detector(cfg, str(checkpoint), device=device)
    # Many types, for a file that is not a checkpoint (unpickling) or not this detector's (shapes).
    except Exception as err:
        raise ClipgapError(
            f"cannot load checkpoint {checkpoint} into the detector of {cfg.filename}: "
            f"{type(err).__name__}: {err}"
        ) from None
    return model, cfg
