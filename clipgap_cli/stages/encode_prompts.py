"""Stage `encode-prompts`: CLIP text embeddings of the source, target-domain and class prompts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from clipgap_cli.artifacts import TextEmbeddings, load_text_embeddings
from clipgap_cli.clip.model import clip_identity, load_clip
from clipgap_cli.clip.prompts import CLASS_TEMPLATE, SOURCE_PROMPT, encode_texts, tokenize
from clipgap_cli.data.classes import check_classes, parse_classes
from clipgap_cli.data.convert import DWD_CLASSES
from clipgap_cli.errors import ClipgapError
from clipgap_cli.rundir import MANIFEST, TEXT_EMBEDDINGS, Run

STAGE = "encode-prompts"


@dataclass(frozen=True)
class EncodeResult:
    path: Path
    embeddings: TextEmbeddings
    changed: bool  # False when the artifact was already current and nothing was written


def parse_class_names(classes: str | None = None, classes_from: Path | None = None) -> list[str]:
    """Class names from `--classes a,b,c`, from a COCO json's categories in id order, or by
    default the Diverse Weather classes."""
    if classes is not None and classes_from is not None:
        raise ClipgapError("give the class names with --classes or --classes-from, not both")
    if classes_from is not None:
        return _coco_category_names(classes_from)
    if classes is not None:
        return parse_classes(classes)
    return list(DWD_CLASSES)


def encode_prompts(
    run: Path,
    target_prompts: Sequence[str],
    *,
    source_prompt: str = SOURCE_PROMPT,
    class_names: Sequence[str] = DWD_CLASSES,
    class_template: str = CLASS_TEMPLATE,
    clip: str = "RN101",
    pretrained: str | Path | None = "openai",
    force: bool = False,
) -> EncodeResult:
    """Encode the prompts with CLIP `clip` / `pretrained` and write `prompts/text_embeddings.pt`.

    Everything is checked, and the model loaded, before the run directory is touched: a bad
    input leaves no trace. If the artifact exists and was made from the same strings with
    the same CLIP model, nothing is done unless `force`.
    """
    source_prompt = source_prompt.strip()
    if not source_prompt:
        raise ClipgapError(
            "the source prompt is empty; pass a sentence such as --source-prompt 'a realistic image'"
        )
    if source_prompt in target_prompts:
        raise ClipgapError(
            f"the target prompt {source_prompt!r} is the source prompt; a target must describe another domain"
        )
    check_classes(class_names, "the class list")
    if class_template.count("{}") != 1:
        raise ClipgapError(
            f"the class template {class_template!r} must contain {{}} exactly once, where the class name goes"
        )
    class_prompts = [class_template.replace("{}", name) for name in class_names]
    identity = clip_identity(clip, pretrained)
    tokens = tokenize(clip, [source_prompt, *target_prompts, *class_prompts])
    options = {
        "source_prompt": source_prompt,
        "target_prompts": list(target_prompts),
        "class_names": list(class_names),
        "class_template": class_template,
        "clip": clip,
        "pretrained": identity["pretrained"],
    }

    existing = Run.open(run) if (Path(run) / MANIFEST).is_file() else None
    if (
        existing is not None
        and not force
        and existing.is_current(TEXT_EMBEDDINGS, STAGE, options)
        and existing.artifact(TEXT_EMBEDDINGS).clip == identity
    ):
        return EncodeResult(existing.path(TEXT_EMBEDDINGS), load_text_embeddings(existing), changed=False)

    embeddings = encode_texts(load_clip(clip, pretrained), tokens)  # (1 + M + K, D)
    m = len(target_prompts)
    result = TextEmbeddings(
        source=embeddings[0].clone(),
        targets=embeddings[1 : 1 + m].clone(),
        classes=embeddings[1 + m :].clone(),
        source_prompt=source_prompt,
        target_prompts=list(target_prompts),
        class_names=list(class_names),
        class_template=class_template,
        class_prompts=class_prompts,
        clip=identity,
    )
    out = Run.create(run)
    with out.writing(STAGE):
        out.write(
            TEXT_EMBEDDINGS,
            lambda tmp: torch.save(result.to_dict(), tmp),
            stage=STAGE,
            options=options,
            clip=identity,
        )
    return EncodeResult(out.path(TEXT_EMBEDDINGS), result, changed=True)


def _coco_category_names(path: Path) -> list[str]:
    """The category names of a COCO json, in category id order."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClipgapError(f"COCO json {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ClipgapError(f"cannot read {path} as COCO json: {err}") from None
    categories = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(categories, list) or not categories:
        raise ClipgapError(f"{path} has no 'categories' list; pass a COCO json with categories")
    if not all(
        isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)
        for c in categories
    ):
        raise ClipgapError(f"every category in {path} needs an integer 'id' and a string 'name'")
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
