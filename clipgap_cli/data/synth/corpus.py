"""RN-synth's pretraining corpus: renders of every condition, captioned as a person would.

Each planned scene is rendered once and shown under several conditions of the grid, so that
content and condition vary independently. A whole scene is captioned with its condition, in
the prompts' own wording ("an image taken on a rain night"; "an image taken during the day"
for a clear day) or a paraphrase ("a street on a rainy night"), half the time with the
objects present ("..., with a car and two persons"). A single object's crop is captioned
"a photo of a car", sometimes with the condition ("a photo of a car at night").

Its random streams are keyed (CORPUS_STREAM, seed, ...) and the zero-shot report's fresh
renders (REPORT_STREAM, seed, ...): five-integer keys, disjoint from the benchmark's
(seed, domain, image, stream) keys whatever the seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from clipgap_cli.data.synth.looks import CONDITION_LOOKS, CONDITIONS, Condition, apply_look
from clipgap_cli.data.synth.scene import CLASSES, Deck, plan_scene, rng_for
from clipgap_cli.data.synth.shapes import render_scene

CORPUS_STREAM = 1_000_003
REPORT_STREAM = 1_000_033

_AT_TIME = {"day": "during the day", "evening": "in the evening", "night": "at night"}
_ADJECTIVE = {"clear": "clear", "cloudy": "cloudy", "rain": "rainy", "snow": "snowy", "fog": "foggy"}
_ADJECTIVE["stormy"] = "stormy"
_IN_WEATHER = {"clear": "under a clear sky", "cloudy": "under a cloudy sky", "rain": "in the rain"}
_IN_WEATHER |= {"snow": "in the snow", "fog": "in the fog", "stormy": "in a storm"}
_PLURAL = {"bus": "buses", "person": "persons"}
_NUMBER = ("no", "a", "two", "three", "four", "five", "six", "seven")
MIN_CROP = 10  # pixels: smaller objects give no crop


def condition_prompt(condition: Condition) -> str:
    """A condition in the default prompts' wording: "an image taken on a fog evening"; a clear
    day is the source prompt "an image taken during the day", a clear night "... at night"."""
    time, weather = condition
    if weather == "clear":
        return f"an image taken {_AT_TIME[time]}"
    return f"an image taken on a {weather} {time}"


def condition_captions(condition: Condition) -> list[str]:
    """The prompt's wording and four paraphrases of a condition."""
    time, weather = condition
    adjective, in_weather, at_time = _ADJECTIVE[weather], _IN_WEATHER[weather], _AT_TIME[time]
    return [
        condition_prompt(condition),
        f"a street on a {adjective} {time}",
        f"a road {in_weather} {at_time}",
        f"a {adjective} {time} in the city",
        f"a photo of traffic {at_time} {in_weather}",
    ]


def objects_phrase(labels: list[int]) -> str:
    """ "a car, two persons and a bus": the objects present, in order of first appearance."""
    counts: dict[int, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    parts = []
    for label, n in counts.items():
        name = CLASSES[label]
        parts.append(f"a {name}" if n == 1 else f"{_NUMBER[min(n, 7)]} {_PLURAL.get(name, name + 's')}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def crop_captions(label: int, condition: Condition) -> list[str]:
    """ "a photo of a car" twice (so that it is drawn half the time), then with the condition."""
    time, weather = condition
    plain = f"a photo of a {CLASSES[label]}"
    return [plain, plain, f"{plain} {_AT_TIME[time]}", f"{plain} {_IN_WEATHER[weather]}"]


@dataclass(frozen=True)
class Sample:
    """One image of the corpus: (R, R, 3) uint8 pixels, its condition index, the candidate
    captions (one is drawn per use), and the class of a crop (None for a whole scene)."""

    pixels: np.ndarray
    condition: int
    captions: tuple[str, ...]
    label: int | None


def render_corpus(
    *,
    seed: int,
    scenes: int,
    looks_per_scene: int,
    render_size: int,
    image_size: int,
    crops_per_image: int,
    stream: int = CORPUS_STREAM,
    progress: Callable[[int, int], None] | None = None,
) -> list[Sample]:
    """Render `scenes` scenes at `render_size` px, each under `looks_per_scene` conditions dealt
    from shuffled decks of the 18 (so the corpus is balanced), as whole scenes resized to
    `image_size` px plus up to `crops_per_image` object crops each."""
    deck, conditions = Deck(rng_for(stream, seed, 0)), _ConditionDeck(rng_for(stream, seed, 1))
    samples: list[Sample] = []
    for s in range(scenes):
        rendered = render_scene(plan_scene(render_size, deck, (stream, seed, 2, s)))
        for k in range(looks_per_scene):
            c = conditions.next()
            rng = rng_for(stream, seed, 3, s, k)
            pixels = apply_look(CONDITION_LOOKS[CONDITIONS[c]], rendered, rng)
            labels = [label for label, _ in rendered.boxes]
            with_objects = [
                f"{caption}, with {objects_phrase(labels)}" for caption in condition_captions(CONDITIONS[c])
            ]
            captions = tuple(condition_captions(CONDITIONS[c]) + with_objects)
            samples.append(Sample(resize(pixels, image_size), c, captions, None))
            boxes = [b for b in rendered.boxes if min(b[1][2] - b[1][0], b[1][3] - b[1][1]) >= MIN_CROP]
            for i in rng.permutation(len(boxes))[:crops_per_image]:
                label, box = boxes[int(i)]
                crop = _square_crop(pixels, box, rng)
                samples.append(
                    Sample(resize(crop, image_size), c, tuple(crop_captions(label, CONDITIONS[c])), label)
                )
        if progress:
            progress(s + 1, scenes)
    return samples


def object_crop(pixels: np.ndarray, box: tuple[int, int, int, int], image_size: int) -> np.ndarray:
    """The square around a ground-truth box, with a fixed 10 % margin, at `image_size` px."""
    return resize(_square(pixels, box, 0.1, 0.5, 0.5), image_size)


class _ConditionDeck:
    """Condition indices dealt from shuffled full decks of the 18."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.cards = rng, []

    def next(self) -> int:
        if not self.cards:
            self.cards = [int(c) for c in self.rng.permutation(len(CONDITIONS))]
        return self.cards.pop()


def _square_crop(pixels: np.ndarray, box, rng: np.random.Generator) -> np.ndarray:
    """A square around `box` with a random margin and placement, as a detector's RoI would be."""
    return _square(pixels, box, rng.uniform(0.05, 0.3), rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65))


def _square(pixels: np.ndarray, box, margin: float, fx: float, fy: float) -> np.ndarray:
    S = pixels.shape[0]
    x0, y0, x1, y1 = box
    side = min(S, round(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    left = int(np.clip(round(x0 - fx * (side - (x1 - x0))), 0, S - side))
    top = int(np.clip(round(y0 - fy * (side - (y1 - y0))), 0, S - side))
    return pixels[top : top + side, left : left + side]


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """A square image (S, S, 3) uint8 at `size` px (bilinear), or itself at that size already."""
    if pixels.shape[0] == size:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
