"""How much a CLIP knows of the synthetic world: zero-shot accuracy and text/image directions.

Computed on fresh renders (the corpus's REPORT_STREAM, never used in pretraining): every
scene is shown under all 18 conditions, and its objects are cropped from each.
- domains: the 5 benchmark domains' images, told apart by their conditions' prompts;
- conditions: all 18 conditions, by the default prompts' wording (the source prompt for a
  clear day);
- classes: ground-truth object crops, by "a photo of a {class}";
- directions: per target prompt j, cos(Δ_j, normalize(mean image embedding of condition j −
  mean image embedding of the source condition)) with Δ_j = normalize(t_j − t_s): whether
  CLIP's text directions point where the images of a domain lie, CLIP the Gap's premise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipgap_cli.clip.model import DEFAULT, clip_identity, load_clip, normalize_pixels
from clipgap_cli.clip.prompts import (
    CLASS_TEMPLATE,
    DEFAULT_PROMPTS_FILE,
    SOURCE_PROMPT,
    encode_texts,
    read_prompts,
    tokenize,
)
from clipgap_cli.clip.split import visual_dims
from clipgap_cli.data.synth import CLASSES, DOMAINS
from clipgap_cli.data.synth.corpus import MIN_CROP, REPORT_STREAM, condition_prompt, object_crop, resize
from clipgap_cli.data.synth.looks import CONDITION_LOOKS, CONDITIONS, DOMAIN_CONDITIONS, apply_look
from clipgap_cli.data.synth.scene import Deck, plan_scene, rng_for
from clipgap_cli.data.synth.shapes import render_scene
from clipgap_cli.rundir import atomic_write

REPORT_NAME = "rn-synth-zero-shot"


def zero_shot_report(
    clip: str = "RN-synth",
    pretrained: str | Path | None = DEFAULT,
    *,
    seed: int = 0,
    scenes: int = 40,
    render_size: int = 192,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """The report as a json-able dict (see the module docstring), on `scenes` fresh scenes."""
    model = load_clip(clip, pretrained)
    size = visual_dims(model.visual).image_size
    scene_images, scene_conditions, crops, crop_labels = [], [], [], []
    deck = Deck(rng_for(REPORT_STREAM, seed, 0))
    for s in range(scenes):
        rendered = render_scene(plan_scene(render_size, deck, (REPORT_STREAM, seed, 2, s)))
        for c, condition in enumerate(CONDITIONS):
            pixels = apply_look(CONDITION_LOOKS[condition], rendered, rng_for(REPORT_STREAM, seed, 3, s, c))
            scene_images.append(resize(pixels, size))
            scene_conditions.append(c)
            for label, box in rendered.boxes:
                if min(box[2] - box[0], box[3] - box[1]) >= MIN_CROP:
                    crops.append(object_crop(pixels, box, size))
                    crop_labels.append(label)
        if progress:
            progress(s + 1, scenes)
    images, conditions = _encode_images(model, scene_images), torch.tensor(scene_conditions)
    crop_embeddings, labels = _encode_images(model, crops), torch.tensor(crop_labels)

    def text(prompts: list[str]) -> torch.Tensor:
        return encode_texts(model, tokenize(clip, prompts))

    domain_conditions = [CONDITIONS.index(DOMAIN_CONDITIONS[d]) for d in DOMAINS]
    in_domains = torch.isin(conditions, torch.tensor(domain_conditions))
    domain_truth = torch.tensor([domain_conditions.index(int(c)) for c in conditions[in_domains]])
    domain_pred = (
        images[in_domains] @ text([condition_prompt(CONDITIONS[c]) for c in domain_conditions]).t()
    ).argmax(1)
    condition_pred = (images @ text([condition_prompt(c) for c in CONDITIONS]).t()).argmax(1)
    class_text = text([CLASS_TEMPLATE.format(name) for name in CLASSES])
    class_pred = (crop_embeddings @ class_text.t()).argmax(1)
    class_cosines = class_text @ class_text.t()
    off_diagonal = class_cosines[~torch.eye(len(CLASSES), dtype=torch.bool)]

    by_prompt = {condition_prompt(c): c for c in CONDITIONS}
    targets = read_prompts(DEFAULT_PROMPTS_FILE)
    t = text([SOURCE_PROMPT, *targets])
    source_mean = images[conditions == CONDITIONS.index(("day", "clear"))].mean(0)
    directions = {}
    for j, prompt in enumerate(targets):
        delta = F.normalize(t[1 + j] - t[0], dim=0)
        c = CONDITIONS.index(by_prompt[prompt])
        image_direction = F.normalize(images[conditions == c].mean(0) - source_mean, dim=0)
        directions[prompt] = float(delta @ image_direction)
    return {
        "clip": clip_identity(clip, pretrained),
        "seed": seed,
        "scenes": scenes,
        "images": {"domains": int(in_domains.sum()), "conditions": len(scene_images), "crops": len(crops)},
        "domain_accuracy": _accuracy(domain_pred, domain_truth),
        "condition_accuracy": _accuracy(condition_pred, conditions),
        "condition_accuracy_by_condition": {
            condition_prompt(cond): _accuracy(condition_pred[conditions == c], conditions[conditions == c])
            for c, cond in enumerate(CONDITIONS)
        },
        "class_accuracy": _accuracy(class_pred, labels),
        "class_accuracy_by_class": {
            name: _accuracy(class_pred[labels == k], labels[labels == k]) for k, name in enumerate(CLASSES)
        },
        "class_prompt_max_cosine": float(off_diagonal.max()),
        "direction_agreement": directions,
        "direction_agreement_median": float(np.median(list(directions.values()))),
    }


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """`out/rn-synth-zero-shot.json` and `.md`, atomically."""
    out = Path(out)
    json_path, md_path = out / f"{REPORT_NAME}.json", out / f"{REPORT_NAME}.md"
    text = json.dumps(report, indent=2) + "\n"
    atomic_write(json_path, lambda tmp: tmp.write_text(text))
    markdown = render_markdown(report)
    atomic_write(md_path, lambda tmp: tmp.write_text(markdown))
    return json_path, md_path


def render_markdown(report: dict) -> str:
    clip, n = report["clip"], report["images"]
    weights = clip["pretrained"] or ("file" if clip.get("sha256") else "random weights")
    sha = f", sha256 `{clip['sha256'][:16]}…`" if clip.get("sha256") else ""
    lines = [
        f"# Zero-shot report: {clip['model']} ({weights}{sha})",
        "",
        f"Made by `clipgap clip zero-shot --clip {clip['model']}` on fresh renders: "
        f"{report['scenes']} scenes (seed {report['seed']}), each under all 18 conditions, "
        "never seen in pretraining.",
        "",
        "| measure | value | images |",
        "|---|---|---|",
        f"| accuracy over the 5 benchmark domains | {_pct(report['domain_accuracy'])} | {n['domains']} |",
        f"| accuracy over the 18 conditions | {_pct(report['condition_accuracy'])} | {n['conditions']} |",
        '| accuracy over the 7 classes, object crops, "a photo of a {}" | '
        f"{_pct(report['class_accuracy'])} | {n['crops']} |",
        f"| median text/image direction agreement over the 15 target prompts | "
        f"{report['direction_agreement_median']:.2f} | |",
        f"| largest cosine between two class prompts | {report['class_prompt_max_cosine']:.2f} | |",
        "",
        "## Per condition (prompt wording)",
        "",
        "| prompt | accuracy |",
        "|---|---|",
        *(f"| {p} | {_pct(a)} |" for p, a in report["condition_accuracy_by_condition"].items()),
        "",
        "## Per class (object crops)",
        "",
        "| class | accuracy |",
        "|---|---|",
        *(f"| {c} | {_pct(a)} |" for c, a in report["class_accuracy_by_class"].items()),
        "",
        "## Direction agreement per target prompt",
        "",
        "cos(Δ_j, normalize(mean image embedding of condition j − mean of the clear day)), "
        'Δ_j = normalize(t_j − t_s), t_s the source prompt "an image taken during the day".',
        "",
        "| target prompt | agreement |",
        "|---|---|",
        *(f"| {p} | {a:.2f} |" for p, a in report["direction_agreement"].items()),
        "",
    ]
    return "\n".join(lines)


@torch.no_grad()
def _encode_images(model, pixels: list[np.ndarray], batch: int = 256) -> torch.Tensor:
    """L2-normalised image embeddings (N, D) of (S, S, 3) uint8 images, CLIP-normalised."""
    out = []
    for i in range(0, len(pixels), batch):
        x = torch.from_numpy(np.stack(pixels[i : i + batch])).permute(0, 3, 1, 2).float()
        out.append(F.normalize(model.encode_image(normalize_pixels(x)).float(), dim=-1))
    return torch.cat(out)


def _accuracy(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return float((pred == truth).float().mean()) if len(truth) else float("nan")


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"
