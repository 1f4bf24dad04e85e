"""RN-synth: the grid of conditions, the captioned corpus, pretraining, the shipped weights."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error
from typer.testing import CliRunner

from clipgap_cli.cli import app
from clipgap_cli.clip.model import SHIPPED, clip_identity, default_pretrained, load_clip
from clipgap_cli.clip.pretrain import Recipe, contrastive_loss, pretrain
from clipgap_cli.clip.prompts import (
    CLASS_TEMPLATE,
    DEFAULT_PROMPTS_FILE,
    SOURCE_PROMPT,
    encode_texts,
    read_prompts,
    tokenize,
)
from clipgap_cli.clip.zero_shot import zero_shot_report
from clipgap_cli.data.synth import CLASSES, DOMAINS, SEVERITY
from clipgap_cli.data.synth.corpus import (
    condition_captions,
    condition_prompt,
    objects_phrase,
    render_corpus,
    tight_crop,
)
from clipgap_cli.data.synth.looks import CONDITION_LOOKS, CONDITIONS, DOMAIN_CONDITIONS, LOOKS, apply_look
from clipgap_cli.data.synth.scene import Deck, plan_scene, rng_for
from clipgap_cli.data.synth.shapes import render_scene
from clipgap_cli.errors import ClipgapError
from clipgap_cli.rundir import sha256_of

WEIGHTS = SHIPPED["RN-synth", "synth"]


# -- the grid of conditions ------------------------------------------------------------------


def test_the_grid_holds_the_benchmark_domains_with_their_looks():
    assert len(CONDITIONS) == 18 == len(set(CONDITIONS))
    assert set(DOMAIN_CONDITIONS) == set(DOMAINS)
    for domain, condition in DOMAIN_CONDITIONS.items():
        assert CONDITION_LOOKS[condition] is LOOKS[domain]


def _all_conditions(size=96):
    rendered = render_scene(plan_scene(size, Deck(rng_for(5, 0)), (5, 0, 0)))
    images = {
        c: apply_look(CONDITION_LOOKS[c], rendered, rng_for(5, 0, 0, i)) for i, c in enumerate(CONDITIONS)
    }
    return rendered, images


def test_every_condition_renders_a_look_of_its_own():
    rendered, images = _all_conditions()
    sky = rendered.scale == 0
    brightness = {c: float(im.mean()) for c, im in images.items()}
    for weather in ("clear", "cloudy", "rain", "snow", "fog", "stormy"):
        assert brightness["night", weather] < brightness["evening", weather] < brightness["day", weather]
    day = {w: images["day", w].astype(float) for w in ("clear", "cloudy", "snow", "stormy")}
    # Overcast skies are greyer than the clear blue sky; a storm is darker than clouds.
    blue = {w: float((im[..., 2] - im[..., 0])[sky].mean()) for w, im in day.items()}
    assert blue["cloudy"] < blue["clear"] / 2 and blue["stormy"] < blue["clear"] / 2
    assert brightness["day", "stormy"] < brightness["day", "cloudy"]
    ground = np.isclose(rendered.scale, rendered.scale.max(axis=1, keepdims=True)) & ~sky
    assert day["snow"][ground].mean() > day["clear"][ground].mean() + 30  # snow lies on the ground
    for a in CONDITIONS:
        for b in CONDITIONS:
            if a < b:
                assert np.abs(images[a].astype(float) - images[b].astype(float)).mean() > 2, (a, b)


# -- captions and the corpus ------------------------------------------------------------------


def test_captions_use_the_prompts_wording():
    assert condition_prompt(("day", "clear")) == SOURCE_PROMPT
    wordings = {condition_prompt(c) for c in CONDITIONS}
    assert set(read_prompts(DEFAULT_PROMPTS_FILE)) <= wordings and len(wordings) == 18
    assert "a street on a rainy night" in condition_captions(("night", "rain"))
    assert condition_captions(("night", "rain"), 0.3)[-1] == "a road in light rain at night"
    assert condition_captions(("day", "fog"), 0.9)[-1] == "a road in thick fog during the day"
    assert len(condition_captions(("night", "rain"), 0.6)) == 5  # neither mild nor strong
    assert len(condition_captions(("night", "clear"), 0.3)) == 5  # a clear sky has no strength
    car, person, bus = (CLASSES.index(n) for n in ("car", "person", "bus"))
    assert objects_phrase([car, person, person, bus]) == "a car, two persons and a bus"


def test_the_corpus_is_balanced_captioned_and_deterministic():
    kwargs = dict(seed=3, scenes=9, looks_per_scene=2, render_size=96, image_size=64, crops_per_image=1)
    samples = render_corpus(**kwargs, min_severity=0.25)
    scenes = [s for s in samples if s.label is None]
    assert len(scenes) == 18 and sorted(s.condition for s in scenes) == list(range(18))
    crops = [s for s in samples if s.label is not None]
    assert crops and all(f"a photo of a {CLASSES[s.label]}" in s.captions for s in crops)
    # Milder showings say so in a caption of their own ("a road in light rain at night").
    assert any(any(" light " in c for c in s.captions) for s in scenes)
    for s in scenes:
        assert condition_prompt(CONDITIONS[s.condition]) in s.captions
        assert any(", with " in c for c in s.captions)
    assert all(s.pixels.shape == (64, 64, 3) and s.pixels.dtype == np.uint8 for s in samples)
    again = render_corpus(**kwargs, min_severity=0.25)
    assert all(
        np.array_equal(a.pixels, b.pixels) and a.captions == b.captions
        for a, b in zip(samples, again, strict=True)
    )


def test_a_tight_crop_is_the_box_alone_stretched_to_a_square():
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[10:40, 20:28] = (200, 100, 50)  # a tall, thin object
    crop = tight_crop(pixels, (20, 10, 28, 40), 32)
    assert crop.shape == (32, 32, 3) and (crop == (200, 100, 50)).all()


# -- pretraining ---------------------------------------------------------------------------------


def test_contrastive_loss_is_clips_and_shares_the_target_of_one_caption():
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(2.0)
    logits = scale.exp() * image @ text.t()
    clip = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.t(), torch.arange(4))) / 2
    assert torch.allclose(contrastive_loss(image, text, torch.arange(4), scale), clip)
    # Samples 0 and 1 have one caption, hence one text embedding: the target is shared between
    # them. With identical embeddings that gives the value of CLIP's own loss too (each row of
    # the twins' logits is the same), so sharing never changes what the loss asks for.
    text[1] = text[0]
    ids = torch.tensor([0, 0, 1, 2])
    logits = scale.exp() * image @ text.t()
    hard = (F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.t(), torch.arange(4))) / 2
    target = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    soft = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    assert torch.allclose(contrastive_loss(image, text, ids, scale), soft) and torch.allclose(soft, hard)


def test_a_short_pretraining_lowers_the_loss_and_loads(tmp_path):
    out = tmp_path / "clip.pt"
    recipe = Recipe(scenes=6, looks_per_scene=2, render_size=96, steps=30, batch_size=16, lr=3e-3)
    result = pretrain(out, recipe)
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 0.1
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["sha256"] == sha256_of(out) and record["recipe"]["steps"] == 30
    loaded = load_clip("RN-synth", out)
    assert torch.equal(loaded.visual.conv1.weight, torch.load(out, weights_only=True)["visual.conv1.weight"])
    assert not torch.equal(loaded.visual.conv1.weight, load_clip("RN-synth", "none").visual.conv1.weight)


def test_pretrain_refuses_bad_options(tmp_path):
    with pytest.raises(ClipgapError, match="is a directory"):
        pretrain(tmp_path, Recipe(steps=1))
    result = CliRunner().invoke(app, ["clip", "pretrain", "--out", str(tmp_path / "x.pt"), "--lr", "0"])
    assert_one_line_error(result, "--lr 0.0 is out of range")
    assert not (tmp_path / "x.pt").exists()


# -- the shipped weights ------------------------------------------------------------------------


def test_rn_synth_defaults_to_its_shipped_weights():
    assert default_pretrained("RN-synth") == "synth"
    assert clip_identity("RN-synth", "synth") == {
        "model": "RN-synth",
        "pretrained": "synth",
        "sha256": sha256_of(WEIGHTS),
    }
    shipped, random = load_clip("RN-synth"), load_clip("RN-synth", "none")
    assert shipped is load_clip("RN-synth", "synth") and shipped is not random
    assert torch.equal(
        shipped.visual.conv1.weight, torch.load(WEIGHTS, weights_only=True)["visual.conv1.weight"]
    )
    assert WEIGHTS.stat().st_size < 21e6


def test_rn_synth_class_prompts_are_distinct():
    model = load_clip("RN-synth")
    text = encode_texts(model, tokenize("RN-synth", [CLASS_TEMPLATE.format(c) for c in CLASSES]))
    cosines = text @ text.t()
    assert cosines[~torch.eye(len(CLASSES), dtype=torch.bool)].max() < 0.9


def test_zero_shot_report_on_fresh_renders(tmp_path):
    report = zero_shot_report("RN-synth", scenes=2)
    assert report["clip"]["pretrained"] == "synth" and set(report["severities"]) == {"1", f"{SEVERITY:g}"}
    full, default = report["severities"]["1"], report["severities"][f"{SEVERITY:g}"]
    assert full["images"] == default["images"] and full["images"]["conditions"] == 36
    assert len(full["direction_agreement"]) == 15
    assert 0 <= full["class_accuracy"] <= 1 and 0 <= default["tight_class_accuracy"] <= 1
    assert full["images"]["tight_crops"] > 0
    # The clear day is the same at any severity; the other conditions are not.
    clear = "an image taken during the day"
    assert full["condition_accuracy_by_condition"][clear] == default["condition_accuracy_by_condition"][clear]
    result = CliRunner().invoke(app, ["clip", "zero-shot", "--scenes", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "rn-synth-zero-shot.json").read_text())["scenes"] == 1
    markdown = (tmp_path / "rn-synth-zero-shot.md").read_text()
    assert "accuracy over the 18 conditions" in markdown and f"severity {SEVERITY:g}" in markdown


def test_zero_shot_of_an_unknown_weights_file_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["clip", "zero-shot", "--pretrained", str(tmp_path / "missing.pt")])
    assert_one_line_error(result, "neither a pretrained tag")
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(app, ["clip", "zero-shot", "--out", str(tmp_path / "file")])
    assert_one_line_error(result, "is a file")
