"""RN-synth's pretraining corpus: renders of every condition, captioned as a person would.

Each planned scene is rendered once and shown under several conditions of the grid, so that
content and condition vary independently, and each showing draws its condition's strength
(`looks.at_severity`): full, or drawn from [min_severity, 1], as real photos show drizzle as
well as storms.
A whole scene is captioned with its condition, in the prompts' own wording ("an image taken
on a rain night"; "an image taken during the day" for a clear day) or a paraphrase ("a street
on a rainy night"; "a road in light rain at night" for a mild one), half the time with the
objects present ("..., with a car and two persons"). Object crops alternate between a square
with context around the box and the tight box itself, stretched to a square as a detector's
RoI is, down to small objects; each is captioned "a photo of a car", sometimes with the
condition ("a photo of a car at night").

Its random streams are keyed (CORPUS_STREAM, seed, ...) and the zero-shot report's fresh
renders (REPORT_STREAM, seed, ...): five-integer keys, disjoint from the benchmark's
(seed, domain, image, stream) keys whatever the seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from clipgap_cli.data.synth.looks import CONDITION_LOOKS, CONDITIONS, Condition, apply_look, at_severity
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
# The words people use for a mild and for a strong condition, and the severities they take.
_MILD, _STRONG = 0.5, 0.85
_IN_WEATHER_MILD = {"cloudy": "under a few clouds", "rain": "in light rain", "snow": "in light snow"}
_IN_WEATHER_MILD |= {"fog": "in light fog", "stormy": "in a mild storm"}
_IN_WEATHER_STRONG = {"cloudy": "under a heavy overcast", "rain": "in heavy rain", "snow": "in heavy snow"}
_IN_WEATHER_STRONG |= {"fog": "in thick fog", "stormy": "in a violent storm"}
MIN_CROP = 10  # pixels: smaller objects give no crop with context
MIN_TIGHT = 6  # pixels: smaller objects give no tight crop


def condition_prompt(condition: Condition) -> str:
    """A condition in the default prompts' wording: "an image taken on a fog evening"; a clear
    day is the source prompt "an image taken during the day", a clear night "... at night"."""
    time, weather = condition
    if weather == "clear":
        return f"an image taken {_AT_TIME[time]}"
    return f"an image taken on a {weather} {time}"


def condition_captions(condition: Condition, severity: float = 1.0) -> list[str]:
    """The prompt's wording and four paraphrases of a condition, plus one that says how strong
    its weather is ("a road in light rain at night") when `severity` makes it mild or strong."""
    time, weather = condition
    adjective, in_weather, at_time = _ADJECTIVE[weather], _IN_WEATHER[weather], _AT_TIME[time]
    captions = [
        condition_prompt(condition),
        f"a street on a {adjective} {time}",
        f"a road {in_weather} {at_time}",
        f"a {adjective} {time} in the city",
        f"a photo of traffic {at_time} {in_weather}",
    ]
    if weather != "clear" and (severity < _MILD or severity >= _STRONG):
        strength = _IN_WEATHER_MILD if severity < _MILD else _IN_WEATHER_STRONG
        captions.append(f"a road {strength[weather]} {at_time}")
    return captions


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
    min_severity: float = 1.0,
    full_strength: float = 0.0,
    stream: int = CORPUS_STREAM,
    progress: Callable[[int, int], None] | None = None,
) -> list[Sample]:
    """Render `scenes` scenes at `render_size` px, each under `looks_per_scene` conditions dealt
    from shuffled decks of the 18 (so the corpus is balanced), a `full_strength` share of them
    at full strength and the others at severities drawn uniformly from [`min_severity`, 1], as
    whole scenes resized to `image_size` px plus up to `crops_per_image` object crops each:
    with context and tight, in turn."""
    deck, conditions = Deck(rng_for(stream, seed, 0)), _ConditionDeck(rng_for(stream, seed, 1))
    samples: list[Sample] = []
    for s in range(scenes):
        rendered = render_scene(plan_scene(render_size, deck, (stream, seed, 2, s)))
        labels = [label for label, _ in rendered.boxes]
        for k in range(looks_per_scene):
            c = conditions.next()
            strength = rng_for(stream, seed, 4, s, k)
            severity = 1.0 if strength.random() < full_strength else float(strength.uniform(min_severity, 1))
            rng = rng_for(stream, seed, 3, s, k)
            pixels = apply_look(at_severity(CONDITION_LOOKS[CONDITIONS[c]], severity), rendered, rng)
            said = condition_captions(CONDITIONS[c], severity)
            captions = tuple(said + [f"{caption}, with {objects_phrase(labels)}" for caption in said])
            samples.append(Sample(resize(pixels, image_size), c, captions, None))
            boxes = [b for b in rendered.boxes if _side(b[1]) >= MIN_TIGHT]
            for n, i in enumerate(rng.permutation(len(boxes))[:crops_per_image]):
                label, box = boxes[int(i)]
                if n % 2 == 0 and _side(box) >= MIN_CROP:
                    crop = resize(_square_crop(pixels, box, rng), image_size)
                else:
                    crop = tight_crop(pixels, box, image_size)
                samples.append(Sample(crop, c, tuple(crop_captions(label, CONDITIONS[c])), label))
        if progress:
            progress(s + 1, scenes)
    return samples


def tight_crop(pixels: np.ndarray, box: tuple[int, int, int, int], image_size: int) -> np.ndarray:
    """The ground-truth box itself stretched to (`image_size`, `image_size`, 3), as RoIAlign
    stretches a proposal to its fixed output."""
    x0, y0, x1, y1 = box
    region = Image.fromarray(np.ascontiguousarray(pixels[y0:y1, x0:x1]))
    return np.asarray(region.resize((image_size, image_size), Image.Resampling.BILINEAR))


def _side(box: tuple[int, int, int, int]) -> int:
    return min(box[2] - box[0], box[3] - box[1])


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
