"""Object shapes and the daylight rendering of a planned scene: sky line, road, lamps, objects.

Each class is drawn as its own shape and colours. The result is the scene's albedo before
any condition's light, with the perspective scale of every pixel and the lamps a condition
may switch on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from clipgap_cli.data.synth.scene import CLASSES, Scene, rng_for

Colour = tuple[int, int, int]
GLASS, TYRE, HUB, HAIR = (55, 80, 105), (22, 22, 24), (150, 150, 155), (40, 30, 25)
HEADLAMP, TAILLAMP = (255, 245, 200), (200, 20, 20)
_PALETTE: dict[str, tuple[Colour, ...]] = {
    "bus": ((235, 185, 35), (240, 140, 30), (225, 205, 60)),
    "truck_box": ((228, 228, 222), (200, 200, 195), (160, 120, 80)),
    "truck_cab": ((180, 30, 30), (30, 70, 160), (40, 120, 60), (230, 230, 230)),
    "car": ((185, 30, 35), (35, 65, 165), (170, 175, 180), (35, 35, 40), (40, 115, 70), (235, 235, 235)),
    "motor": ((170, 20, 20), (25, 25, 30), (30, 60, 150)),
    "frame": ((0, 170, 200), (220, 40, 160), (240, 240, 240), (60, 200, 60)),
    "shirt": ((200, 60, 60), (60, 120, 200), (230, 200, 60), (80, 170, 90), (230, 230, 230), (150, 80, 180)),
    "trousers": ((40, 45, 70), (30, 30, 30), (90, 80, 60)),
    "skin": ((240, 200, 170), (200, 150, 110), (140, 95, 65)),
    "jacket": ((240, 120, 20), (30, 150, 70), (200, 30, 30)),
    "helmet": ((250, 250, 250), (250, 220, 0), (220, 30, 30)),
    "building": ((150, 145, 140), (120, 110, 100), (170, 160, 140), (95, 100, 110)),
    "ground": ((85, 100, 55), (115, 100, 75), (95, 95, 88)),
}


@dataclass(frozen=True)
class Lamp:
    """A light source; `depth` is its perspective scale, `ground` the road point below it."""

    x: float
    y: float
    radius: float
    kind: str
    depth: float
    ground: tuple[float, float] | None


@dataclass(frozen=True)
class Rendered:
    """A scene in daylight, before a domain's look.

    albedo: (S, S, 3) float32 in [0, 1]; scale: (S, S) float32, the perspective scale of
    what each pixel shows, 0 for the sky; boxes: (label, (x0, y0, x1, y1)) tight pixel
    boxes with exclusive ends.
    """

    albedo: np.ndarray
    scale: np.ndarray
    lamps: tuple[Lamp, ...]
    boxes: tuple[tuple[int, tuple[int, int, int, int]], ...]
    horizon: int


def _pick(rng, palette: str) -> Colour:
    base = _PALETTE[palette][int(rng.integers(len(_PALETTE[palette])))]
    return tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in base)  # type: ignore[return-value]


def render_scene(scene: Scene) -> Rendered:
    rng = rng_for(*scene.style_key)
    S, hz = scene.size, scene.horizon
    image = Image.new("RGB", (S, S), (0, 0, 0))
    image.paste(_pick(rng, "ground"), (0, hz, S, S))
    draw = ImageDraw.Draw(image)
    far = Image.new("L", (S, S), 0)  # the skyline, which the sky must not paint over
    lamps: list[Lamp] = []
    _draw_skyline(draw, ImageDraw.Draw(far), rng, S, hz, lamps)
    _draw_road(draw, rng, S, hz, lamps)

    scale = np.zeros((S, S), np.float32)
    scale[hz:] = ((np.arange(hz, S, dtype=np.float32) + 1 - hz) / (S - hz))[:, None]
    scale[(np.asarray(far) > 0)] = 0.03
    boxes = []
    for o in sorted(scene.objects, key=lambda o: o.scale):
        layer = Image.new("RGBA", (o.w, o.h), (0, 0, 0, 0))
        lights = _SHAPES[CLASSES[o.label]](ImageDraw.Draw(layer), o.w, o.h, rng)
        if o.facing < 0:
            layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            lights = [(o.w - 1 - x, y, r, kind) for x, y, r, kind in lights]
        alpha = layer.getchannel("A")
        image.paste(layer, (o.x, o.y), alpha)
        scale[o.y : o.y + o.h, o.x : o.x + o.w][np.asarray(alpha) > 0] = o.scale
        left, top, right, bottom = alpha.getbbox()
        boxes.append((o.label, (o.x + left, o.y + top, o.x + right, o.y + bottom)))
        ground = o.y + o.h
        lamps += [Lamp(o.x + x, o.y + y, r, kind, o.scale, (o.x + x, ground)) for x, y, r, kind in lights]
    # A lamp shines only where nothing nearer hides it.
    visible = tuple(
        lamp
        for lamp in lamps
        if 0 <= lamp.x < S and 0 <= lamp.y < S and scale[int(lamp.y), int(lamp.x)] <= lamp.depth + 1e-6
    )
    albedo = np.asarray(image, dtype=np.float32) / 255
    return Rendered(albedo, scale, visible, tuple(boxes), hz)


def _draw_skyline(draw, far, rng, S: int, hz: int, lamps: list[Lamp]) -> None:
    x = -rng.uniform(0, 0.1) * S
    while x < S:
        width = rng.uniform(0.06, 0.2) * S
        if rng.random() < 0.7:
            height = rng.uniform(0.04, 0.28) * S
            box = [x, hz - height, x + width, hz + 1]
            draw.rectangle(box, fill=_pick(rng, "building"))
            far.rectangle(box, fill=255)
            step = 0.035 * S
            for wy in np.arange(hz - height + 0.3 * step, hz - 0.6 * step, step):
                for wx in np.arange(x + 0.3 * step, x + width - 0.6 * step, step):
                    draw.rectangle([wx, wy, wx + 0.45 * step, wy + 0.5 * step], fill=(45, 50, 60))
                    if rng.random() < 0.3:
                        lamps.append(
                            Lamp(wx + 0.22 * step, wy + 0.25 * step, 0.3 * step, "window", 0.03, None)
                        )
        else:
            height = rng.uniform(0.06, 0.16) * S
            crown = [x, hz - height, x + width * 0.8, hz - height * 0.3]
            draw.rectangle([x + width * 0.35, hz - height * 0.4, x + width * 0.45, hz + 1], fill=(70, 50, 35))
            draw.ellipse(crown, fill=(40, 85 + int(rng.integers(0, 40)), 40))
            far.ellipse(crown, fill=255)
            far.rectangle([x + width * 0.35, hz - height * 0.4, x + width * 0.45, hz + 1], fill=255)
        x += width + rng.uniform(-0.02, 0.05) * S


def _draw_road(draw, rng, S: int, hz: int, lamps: list[Lamp]) -> None:
    vx = S * rng.uniform(0.4, 0.6)  # the vanishing point
    top, bottom = 0.01 * S, S * rng.uniform(0.55, 0.85)  # half widths of the road

    def at(offset: float, scale: float) -> tuple[float, float]:
        """The point `offset` road half-widths from the centre line, at perspective `scale`."""
        return vx + offset * (top + (bottom - top) * scale), hz + scale * (S - hz)

    grey = int(rng.integers(70, 100))
    draw.polygon([at(-1.5, 0), at(1.5, 0), at(1.5, 1), at(-1.5, 1)], fill=(150, 145, 135))  # pavement
    draw.polygon([at(-1, 0), at(1, 0), at(1, 1), at(-1, 1)], fill=(grey, grey, grey + 3))
    for side in (-1, 1):
        draw.polygon([at(side * 0.97, 0), at(side, 0), at(side, 1), at(side * 0.97, 1)], fill=(225, 225, 215))
    scale = 0.05
    while scale < 1:
        end = min(1.0, scale * 1.18)
        draw.polygon([at(-0.02, scale), at(0.02, scale), at(0.02, end), at(-0.02, end)], fill=(230, 230, 220))
        scale *= 1.45
    for side in (-1, 1):
        for scale in rng.choice([0.2, 0.32, 0.5, 0.75, 1.0], size=int(rng.integers(1, 4)), replace=False):
            bx, by = at(side * 1.25, scale)
            height, arm, width = 0.5 * S * scale, 0.08 * S * scale, max(1, round(0.012 * S * scale))
            draw.line(
                [(bx, by), (bx, by - height), (bx - side * arm, by - height)], fill=(50, 50, 55), width=width
            )
            radius = max(1.0, 0.014 * S * scale)
            lamps.append(
                Lamp(bx - side * arm, by - height + radius, radius, "street", scale, (bx - side * arm, by))
            )


# The class shapes: each draws one object facing right into a w x h RGBA layer, touching all
# four edges (so the layer's alpha bbox is the tight box), and returns its lamps as
# (x, y, radius, kind) in layer pixels. Shapes are laid out in box fractions (u, v).


def _uv(w: int, h: int, *points: tuple[float, float]) -> list[tuple[float, float]]:
    """Box fractions to layer pixels: (0, 0) is the top-left pixel, (1, 1) the bottom-right."""
    return [(u * (w - 1), v * (h - 1)) for u, v in points]


def _wheel(d, cx: float, cy: float, r: float, ring: float = 0) -> None:
    if ring:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=TYRE, width=max(1, round(ring)))
        return
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=TYRE)
    if r >= 3:
        d.ellipse([cx - 0.45 * r, cy - 0.45 * r, cx + 0.45 * r, cy + 0.45 * r], fill=HUB)


def _rounded(d, box: list[tuple[float, float]], radius: float, fill: Colour) -> None:
    (x0, y0), (x1, y1) = box
    radius = min(radius, (x1 - x0) / 2, (y1 - y0) / 2)
    d.rounded_rectangle([x0, y0, x1, y1], radius=max(0, int(radius)), fill=fill)


def _shade(colour: Colour, factor: float) -> Colour:
    return tuple(int(c * factor) for c in colour)  # type: ignore[return-value]


def _car(d, w: int, h: int, rng):
    body, H = _pick(rng, "car"), h - 1
    r = min(0.22 * h, 0.11 * w)
    _rounded(d, _uv(w, h, (0, 0.38), (1, 1 - 0.7 * r / H)), 0.12 * h, body)
    d.polygon(_uv(w, h, (0.17, 0.42), (0.3, 0), (0.68, 0), (0.83, 0.42)), fill=body)
    d.polygon(_uv(w, h, (0.23, 0.4), (0.34, 0.1), (0.64, 0.1), (0.76, 0.4)), fill=GLASS)
    d.line(_uv(w, h, (0.49, 0.08), (0.49, 0.42)), fill=body, width=max(1, round(0.03 * w)))
    for cx, _ in _uv(w, h, (0.2, 0), (0.8, 0)):
        _wheel(d, cx, H - r, r)
    d.rectangle(_uv(w, h, (0.96, 0.47), (1, 0.6)), fill=HEADLAMP)
    d.rectangle(_uv(w, h, (0, 0.47), (0.03, 0.6)), fill=TAILLAMP)
    (hx, hy), (tx, ty) = _uv(w, h, (1, 0.53), (0, 0.53))
    return [(hx - 1, hy, 0.07 * h + 1, "head"), (tx + 1, ty, 0.06 * h + 1, "tail")]


def _bus(d, w: int, h: int, rng):
    body, H = _pick(rng, "bus"), h - 1
    r = min(0.14 * h, 0.07 * w)
    _rounded(d, _uv(w, h, (0, 0), (1, 1 - 0.8 * r / H)), 0.08 * h, body)
    n = max(3, round(w / (0.55 * h)))
    for k in range(n):
        u = 0.03 + k * 0.84 / n
        d.rectangle(_uv(w, h, (u, 0.12), (u + 0.67 / n, 0.45)), fill=GLASS)
    d.rectangle(_uv(w, h, (0.9, 0.1), (0.99, 0.55)), fill=GLASS)
    d.rectangle(_uv(w, h, (0, 0.6), (1, 0.66)), fill=_shade(body, 0.6))
    d.rectangle(_uv(w, h, (0.8, 0.52), (0.86, 1 - r / H)), fill=GLASS)
    for cx, _ in _uv(w, h, (0.16, 0), (0.78, 0)):
        _wheel(d, cx, H - r, r)
    d.rectangle(_uv(w, h, (0.97, 0.72), (1, 0.8)), fill=HEADLAMP)
    (hx, hy), (tx, ty) = _uv(w, h, (1, 0.76), (0, 0.72))
    return [(hx - 1, hy, 0.06 * h + 1, "head"), (tx + 1, ty, 0.05 * h + 1, "tail")]


def _truck(d, w: int, h: int, rng):
    box, cab, H = _pick(rng, "truck_box"), _pick(rng, "truck_cab"), h - 1
    r = min(0.13 * h, 0.06 * w)
    d.rectangle(_uv(w, h, (0, 0), (0.7, 0.82)), fill=box)
    d.line(_uv(w, h, (0, 0.12), (0.7, 0.12)), fill=_shade(box, 0.75), width=max(1, round(0.03 * h)))
    d.polygon(_uv(w, h, (0.72, 0.84), (0.72, 0.26), (0.9, 0.26), (1, 0.46), (1, 0.84)), fill=cab)
    d.polygon(_uv(w, h, (0.85, 0.32), (0.9, 0.32), (0.97, 0.47), (0.85, 0.47)), fill=GLASS)
    d.rectangle(_uv(w, h, (0, 0.8), (1, 0.88)), fill=(50, 50, 52))
    for cx, _ in _uv(w, h, (0.12, 0), (0.55, 0), (0.87, 0)):
        _wheel(d, cx, H - r, r)
    d.rectangle(_uv(w, h, (0.97, 0.66), (1, 0.76)), fill=HEADLAMP)
    (hx, hy), (tx, ty) = _uv(w, h, (1, 0.71), (0, 0.74))
    return [(hx - 1, hy, 0.06 * h + 1, "head"), (tx + 1, ty, 0.05 * h + 1, "tail")]


def _motor(d, w: int, h: int, rng):
    body, W, H = _pick(rng, "motor"), w - 1, h - 1
    r, line = min(0.3 * h, 0.19 * w), max(1, round(0.06 * h))
    d.line([(W - r, H - r), *_uv(w, h, (0.86, 0.1))], fill=HUB, width=line)
    d.line(_uv(w, h, (0.78, 0), (0.92, 0.05)), fill=TYRE, width=line)
    for cx in (r, W - r):
        _wheel(d, cx, H - r, r)
    d.polygon(_uv(w, h, (0.28, 0.42), (0.45, 0.28), (0.72, 0.28), (0.84, 0.46), (0.64, 0.62)), fill=body)
    d.rectangle(_uv(w, h, (0.38, 0.55), (0.62, 0.8)), fill=(60, 60, 65))
    d.rectangle(_uv(w, h, (0.18, 0.36), (0.46, 0.44)), fill=(20, 20, 20))
    d.ellipse(_uv(w, h, (0.86, 0.15), (0.94, 0.28)), fill=HEADLAMP)
    (hx, hy), (tx, ty) = _uv(w, h, (0.9, 0.22), (0.2, 0.4))
    return [(hx, hy, 0.06 * h + 1, "head"), (tx, ty, 0.04 * h + 1, "tail")]


def _bicycle(d, w: int, h: int, r: float, frame: Colour, line: int, top: float) -> None:
    """Wheels of radius r standing on the bottom edge; saddle and handlebar at height `top` (v)."""
    W, H = w - 1, h - 1
    rear, front, crank = (r, H - r), (W - r, H - r), (0.47 * W, H - r)
    for hub in (rear, front):
        _wheel(d, *hub, r, ring=max(1, 0.22 * r))
    seat, handle = _uv(w, h, (0.38, top + 0.1), (0.74, top + 0.08))
    d.line([rear, seat, crank, rear], fill=frame, width=line)
    d.line([seat, handle, crank], fill=frame, width=line)
    d.line([front, handle], fill=frame, width=line)
    d.line(_uv(w, h, (0.3, top + 0.06), (0.44, top + 0.06)), fill=TYRE, width=line)
    d.line(_uv(w, h, (0.7, top), (0.84, top)), fill=TYRE, width=line)


def _bike(d, w: int, h: int, rng):
    _bicycle(d, w, h, min(0.42 * h, 0.2 * w), _pick(rng, "frame"), max(1, round(0.07 * h)), 0)
    return []


def _person(d, w: int, h: int, rng):
    shirt, trousers = _pick(rng, "shirt"), _pick(rng, "trousers")
    head = _uv(w, h, (0.26, 0), (0.74, 0.15))
    d.ellipse(head, fill=_pick(rng, "skin"))
    d.chord(head, 180, 360, fill=HAIR)
    _rounded(d, _uv(w, h, (0.14, 0.15), (0.86, 0.56)), 0.15 * w, shirt)
    d.rectangle(_uv(w, h, (0, 0.17), (0.16, 0.5)), fill=shirt)
    d.rectangle(_uv(w, h, (0.84, 0.17), (1, 0.5)), fill=shirt)
    stride = rng.uniform(0, 0.12)
    d.polygon(_uv(w, h, (0.18, 0.54), (0.48, 0.54), (0.46, 1), (0.16 - stride, 1)), fill=trousers)
    d.polygon(_uv(w, h, (0.52, 0.54), (0.82, 0.54), (0.84 + stride, 1), (0.54, 1)), fill=trousers)
    return []


def _rider(d, w: int, h: int, rng):
    H = h - 1
    r, line = min(0.24 * h, 0.17 * w), max(1, round(0.035 * h))
    _bicycle(d, w, h, r, _pick(rng, "frame"), line, 0.5)
    jacket, trousers = _pick(rng, "jacket"), _pick(rng, "trousers")
    hip, knee, pedal = _uv(w, h, (0.42, 0.6), (0.62, 0.7), (0.49, 1 - r / H))
    d.line([hip, knee, pedal], fill=trousers, width=max(1, round(0.07 * h)))
    d.polygon(_uv(w, h, (0.33, 0.6), (0.5, 0.62), (0.7, 0.22), (0.52, 0.15)), fill=jacket)
    d.line(_uv(w, h, (0.62, 0.2), (0.76, 0.56)), fill=jacket, width=max(1, round(0.05 * h)))
    cx, radius = 0.66 * (w - 1), 0.1 * H
    head = [cx - radius, 0, cx + radius, 2 * radius]
    d.ellipse(head, fill=_pick(rng, "skin"))
    d.chord(head, 170, 370, fill=_pick(rng, "helmet"))
    [(lx, ly)] = _uv(w, h, (0.8, 0.58))
    return [(lx, ly, 0.04 * h + 1, "head")]


_SHAPES = {"bus": _bus, "bike": _bike, "car": _car, "motor": _motor, "person": _person}
_SHAPES |= {"rider": _rider, "truck": _truck}
