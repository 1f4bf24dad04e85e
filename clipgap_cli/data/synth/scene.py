"""Scene planning: where the horizon lies and which objects stand where, in perspective.

The lower an object stands, the larger it is. Classes are dealt from shuffled decks so that
every class comes up once in every 7 objects. Every random stream is a numpy Generator
seeded by a key of integers, so the same key plans the same scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipgap_cli.data.convert import DWD_CLASSES as CLASSES

# Width and height of each class standing at the bottom edge of the image (perspective
# scale 1), as fractions of the image size. Objects shrink towards the horizon until their
# longest side is MIN_SIDE of the image: at 256 px, objects span about 26 to 120 px.
EXTENT = {
    "bus": (0.47, 0.22),
    "bike": (0.19, 0.12),
    "car": (0.32, 0.13),
    "motor": (0.20, 0.13),
    "person": (0.09, 0.26),
    "rider": (0.17, 0.27),
    "truck": (0.44, 0.24),
}
MIN_SIDE = 0.1
MIN_VISIBLE = 0.5  # nearer objects may cover at most half of an object's box


@dataclass(frozen=True)
class Object:
    """An object to draw: its class index, drawing box in pixels, perspective scale, side."""

    label: int
    x: int
    y: int
    w: int
    h: int
    scale: float
    facing: int  # 1: the front points right, -1: left


@dataclass(frozen=True)
class Scene:
    size: int
    horizon: int
    objects: tuple[Object, ...]
    style_key: tuple[int, ...]  # seeds the background and the objects' colours


def rng_for(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


class Deck:
    """Classes dealt from shuffled full decks: every class comes up once in every 7 objects,
    so each domain has every class as soon as it has 7 objects."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.cards = rng, []

    def peek(self) -> int:
        if not self.cards:
            self.cards = [int(c) for c in self.rng.permutation(len(CLASSES))]
        return self.cards[0]

    def pop(self) -> None:
        self.cards.pop(0)


def plan_scene(size: int, deck: Deck, key: tuple[int, ...]) -> Scene:
    """Where the horizon is and which objects stand where; a class that finds no place
    stays on top of the deck for the next object."""
    rng = rng_for(*key, 0)
    horizon = round(size * rng.uniform(0.36, 0.46))
    objects: list[Object] = []
    for _ in range(int(rng.integers(3, 8))):
        placed = _place(rng, size, horizon, deck.peek(), objects)
        if placed is not None:
            objects.append(placed)
            deck.pop()
    return Scene(size, horizon, tuple(objects), (*key, 2))


def _place(rng, size: int, horizon: int, label: int, objects: list[Object]) -> Object | None:
    w_ref, h_ref = EXTENT[CLASSES[label]]
    s_min = MIN_SIDE / max(w_ref, h_ref)
    for _ in range(12):
        scale = s_min ** (1 - rng.random())  # log-uniform: small, far objects are common
        w = max(3, round(w_ref * scale * size * rng.uniform(0.9, 1.1)))
        h = max(3, round(h_ref * scale * size * rng.uniform(0.9, 1.1)))
        base = min(size, round(horizon + scale * (size - horizon)))
        x = int(rng.integers(0, size - w + 1))
        candidate = Object(label, x, max(0, base - h), w, h, scale, 1 if rng.random() < 0.5 else -1)
        if _visible_enough([*objects, candidate]):
            return candidate
    return None


def _visible_enough(objects: list[Object]) -> bool:
    """Whether nearer objects leave at least MIN_VISIBLE of every object's box uncovered."""
    order = sorted(objects, key=lambda o: o.scale)
    for rank, o in enumerate(order):
        free = np.ones((o.h, o.w), bool)
        for n in order[rank + 1 :]:
            x0, x1 = max(o.x, n.x) - o.x, min(o.x + o.w, n.x + n.w) - o.x
            y0, y1 = max(o.y, n.y) - o.y, min(o.y + o.h, n.y + n.h) - o.y
            if x1 > x0 and y1 > y0:
                free[y0:y1, x0:x1] = False
        if free.mean() < MIN_VISIBLE:
            return False
    return True
