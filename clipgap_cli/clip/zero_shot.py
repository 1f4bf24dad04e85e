"""How much a CLIP knows of the synthetic world: zero-shot accuracy and text/image directions.

Computed on fresh renders (the corpus's REPORT_STREAM, never used in pretraining): every
scene is shown under all 18 conditions, at full strength and at the benchmark's default
severity, and its objects are cropped from each. At each severity:
- domains: the 5 benchmark domains' images, told apart by their conditions' prompts;
- conditions: all 18 conditions, by the default prompts' wording (the source prompt for a
  clear day);
- classes: ground-truth object crops by "a photo of a {class}", as squares with context and
  as tight boxes stretched to a square (what a detector's RoI head sees);
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
from clipgap_cli.data.synth import CLASSES, DOMAINS, SEVERITY
from clipgap_cli.data.synth.corpus import (
    MIN_CROP,
    REPORT_STREAM,
    condition_prompt,
    object_crop,
    resize,
    tight_crop,
)
from clipgap_cli.data.synth.looks import (
    CONDITION_LOOKS,
    CONDITIONS,
    DOMAIN_CONDITIONS,
    apply_look,
    at_severity,
)
from clipgap_cli.data.synth.scene import Deck, plan_scene, rng_for
from clipgap_cli.data.synth.shapes import render_scene
from clipgap_cli.rundir import atomic_write

REPORT_NAME = "rn-synth-zero-shot"
TIGHT_MIN_SIDE = 12  # pixels at the render size: the tight-box measure's smallest objects


def zero_shot_report(
    clip: str = "RN-synth",
    pretrained: str | Path | None = DEFAULT,
    *,
    seed: int = 0,
    scenes: int = 40,
    render_size: int = 192,
    severities: tuple[float, ...] = (1.0, SEVERITY),
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """The report as a json-able dict (see the module docstring), on `scenes` fresh scenes, each
    shown under the 18 conditions at every severity of `severities` (`looks.at_severity`)."""
    model = load_clip(clip, pretrained)
    size = visual_dims(model.visual).image_size
    deck = Deck(rng_for(REPORT_STREAM, seed, 0))
    shown = {severity: _Shown() for severity in severities}
    for s in range(scenes):
        rendered = render_scene(plan_scene(render_size, deck, (REPORT_STREAM, seed, 2, s)))
        for c, condition in enumerate(CONDITIONS):
            for severity, images in shown.items():
                look = at_severity(CONDITION_LOOKS[condition], severity)
                pixels = apply_look(look, rendered, rng_for(REPORT_STREAM, seed, 3, s, c))
                images.add(pixels, c, rendered, size)
        if progress:
            progress(s + 1, scenes)

    def text(prompts: list[str]) -> torch.Tensor:
        return encode_texts(model, tokenize(clip, prompts))

    class_text = text([CLASS_TEMPLATE.format(name) for name in CLASSES])
    class_cosines = class_text @ class_text.t()
    off_diagonal = class_cosines[~torch.eye(len(CLASSES), dtype=torch.bool)]
    return {
        "clip": clip_identity(clip, pretrained),
        "seed": seed,
        "scenes": scenes,
        "render_size": render_size,
        "tight_min_side": TIGHT_MIN_SIDE,
        "class_prompt_max_cosine": float(off_diagonal.max()),
        "severities": {
            f"{severity:g}": _measures(model, images, text, class_text) for severity, images in shown.items()
        },
    }


class _Shown:
    """The report's images at one severity: scenes (with their condition indices), object crops
    with context and tight object crops (with their labels), as (S, S, 3) uint8."""

    def __init__(self) -> None:
        self.scenes, self.conditions = [], []
        self.crops, self.crop_labels, self.tight, self.tight_labels = [], [], [], []

    def add(self, pixels: np.ndarray, condition: int, rendered, size: int) -> None:
        self.scenes.append(resize(pixels, size))
        self.conditions.append(condition)
        for label, box in rendered.boxes:
            side = min(box[2] - box[0], box[3] - box[1])
            if side >= MIN_CROP:
                self.crops.append(object_crop(pixels, box, size))
                self.crop_labels.append(label)
            if side >= TIGHT_MIN_SIDE:
                self.tight.append(tight_crop(pixels, box, size))
                self.tight_labels.append(label)


def _measures(model, shown: _Shown, text, class_text: torch.Tensor) -> dict:
    """The report's measures on the images of one severity."""
    images, conditions = _encode_images(model, shown.scenes), torch.tensor(shown.conditions)
    domain_conditions = [CONDITIONS.index(DOMAIN_CONDITIONS[d]) for d in DOMAINS]
    in_domains = torch.isin(conditions, torch.tensor(domain_conditions))
    domain_truth = torch.tensor([domain_conditions.index(int(c)) for c in conditions[in_domains]])
    domain_pred = (
        images[in_domains] @ text([condition_prompt(CONDITIONS[c]) for c in domain_conditions]).t()
    ).argmax(1)
    condition_pred = (images @ text([condition_prompt(c) for c in CONDITIONS]).t()).argmax(1)
    labels, tight_labels = torch.tensor(shown.crop_labels), torch.tensor(shown.tight_labels)
    class_pred = (_encode_images(model, shown.crops) @ class_text.t()).argmax(1)
    tight_pred = (_encode_images(model, shown.tight) @ class_text.t()).argmax(1)

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
        "images": {
            "domains": int(in_domains.sum()),
            "conditions": len(shown.scenes),
            "crops": len(shown.crops),
            "tight_crops": len(shown.tight),
        },
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
        "tight_class_accuracy": _accuracy(tight_pred, tight_labels),
        "tight_class_accuracy_by_class": {
            name: _accuracy(tight_pred[tight_labels == k], tight_labels[tight_labels == k])
            for k, name in enumerate(CLASSES)
        },
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
    clip = report["clip"]
    weights = clip["pretrained"] or ("file" if clip.get("sha256") else "random weights")
    sha = f", sha256 `{clip['sha256'][:16]}…`" if clip.get("sha256") else ""
    at = report["severities"]
    names = list(at)
    columns = " | ".join(f"severity {name}" for name in names)

    def row(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(cell(at[name]) for name in names) + " |"

    def table(title: str, header: str, measure: str, fmt=_pct) -> list[str]:
        """A measure given per prompt or per class, one row each."""
        return [
            f"## {title}",
            "",
            f"| {header} | {columns} |",
            "|---|" + "---|" * len(names),
            *(row(k, lambda m, k=k: fmt(m[measure][k])) for k in at[names[0]][measure]),
            "",
        ]

    side = report["tight_min_side"]
    counts = at[names[0]]["images"]
    lines = [
        f"# Zero-shot report: {clip['model']} ({weights}{sha})",
        "",
        f"Made by `clipgap clip zero-shot --clip {clip['model']}` on fresh renders: "
        f"{report['scenes']} scenes (seed {report['seed']}, {report['render_size']} px), each under all "
        f"18 conditions at each severity (1: the full condition; {SEVERITY:g}: the benchmark's default, "
        "`clipgap data synth --severity`), never seen in pretraining.",
        "",
        f"| measure | {columns} |",
        "|---|" + "---|" * len(names),
        row("accuracy over the 5 benchmark domains", lambda m: _pct(m["domain_accuracy"])),
        row("accuracy over the 18 conditions", lambda m: _pct(m["condition_accuracy"])),
        row(
            'accuracy over the 7 classes, object crops with context, "a photo of a {}"',
            lambda m: _pct(m["class_accuracy"]),
        ),
        row(
            f"accuracy over the 7 classes, tight ground-truth boxes of side ≥ {side} px",
            lambda m: _pct(m["tight_class_accuracy"]),
        ),
        row(
            "median text/image direction agreement over the 15 target prompts",
            lambda m: f"{m['direction_agreement_median']:.2f}",
        ),
        "",
        f"Images per severity: {counts['domains']} of the 5 domains, {counts['conditions']} "
        f"of the 18 conditions, {counts['crops']} crops with context (objects of side ≥ {MIN_CROP} "
        f"px, a square with a 10 % margin), {counts['tight_crops']} tight crops (the box stretched "
        "to a square, as RoIAlign stretches a proposal). The largest cosine between two class prompts is "
        f"{report['class_prompt_max_cosine']:.2f}.",
        "",
        *table("Per condition (prompt wording)", "prompt", "condition_accuracy_by_condition"),
        *table("Per class, object crops with context", "class", "class_accuracy_by_class"),
        *table(f"Per class, tight boxes of side ≥ {side} px", "class", "tight_class_accuracy_by_class"),
        "Direction agreement: cos(Δ_j, normalize(mean image embedding of condition j − mean of the clear "
        'day)), Δ_j = normalize(t_j − t_s), t_s the source prompt "an image taken during the day".',
        "",
        *table("Direction agreement per target prompt", "prompt", "direction_agreement", "{:.2f}".format),
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
