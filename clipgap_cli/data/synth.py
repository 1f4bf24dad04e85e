"""The synthetic benchmark: procedurally rendered road scenes in the five Diverse Weather domains.

An image is a road scene (sky, skyline, road, street lamps) with 3 to 7 objects of the seven
DWD classes, each drawn as its own shape and colours and placed in perspective: the lower
an object stands, the larger it is. A domain is a way of lighting and photographing such a
scene, as the real ones differ: illumination and colour cast, the sky, lamps that glow and
glare at night, reflections on a wet road, rain streaks, fog that thickens with distance,
blur and sensor noise. Content and look come from separate random streams, so
`render_preview` shows one scene in every domain. Every stream is a numpy Generator seeded
by (seed, domain, image, stream): the same seed gives byte-identical files.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from clipgap_cli.data.convert import DWD_CLASSES, DWD_DOMAINS, ConvertReport, convert_voc
from clipgap_cli.errors import ClipgapError
from clipgap_cli.rundir import atomic_write

CLASSES = DWD_CLASSES
DOMAINS = DWD_DOMAINS
SIZES = (64, 1024)  # the sizes `synthesize` accepts, in pixels
VOC_DIR = "voc"  # the VOC tree's place inside the output directory
TRAIN_FRACTION = 0.75
JPEG_QUALITY = 90

# Width and height of each class standing at the bottom edge of the image (perspective
# scale 1), as fractions of the image size. Objects shrink towards the horizon until their
# longest side is MIN_SIDE of the image: at 256 px, objects span about 26 to 120 px.
_EXTENT = {
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
_PREVIEW = len(DOMAINS)  # the domain key of the preview's random streams

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
# Emitted light of each kind of lamp, in [0, 1] per channel.
_LAMP_LIGHT = {
    "head": (1.0, 0.95, 0.8),
    "tail": (0.9, 0.1, 0.05),
    "street": (1.0, 0.72, 0.35),
    "window": (0.55, 0.45, 0.25),
}


@dataclass(frozen=True)
class _Object:
    """An object to draw: its class index, drawing box in pixels, perspective scale, side."""

    label: int
    x: int
    y: int
    w: int
    h: int
    scale: float
    facing: int  # 1: the front points right, -1: left


@dataclass(frozen=True)
class _Scene:
    size: int
    horizon: int
    objects: tuple[_Object, ...]
    style_key: tuple[int, ...]  # seeds the background and the objects' colours


@dataclass(frozen=True)
class _Lamp:
    """A light source; `depth` is its perspective scale, `ground` the road point below it."""

    x: float
    y: float
    radius: float
    kind: str
    depth: float
    ground: tuple[float, float] | None


@dataclass(frozen=True)
class _Rendered:
    """A scene in daylight, before a domain's look.

    albedo: (S, S, 3) float32 in [0, 1]; scale: (S, S) float32, the perspective scale of
    what each pixel shows, 0 for the sky; boxes: (label, (x0, y0, x1, y1)) tight pixel
    boxes with exclusive ends.
    """

    albedo: np.ndarray
    scale: np.ndarray
    lamps: tuple[_Lamp, ...]
    boxes: tuple[tuple[int, tuple[int, int, int, int]], ...]
    horizon: int


@dataclass(frozen=True)
class _Look:
    """How a domain lights and photographs a scene. Pairs are per-image (low, high) ranges."""

    gain: tuple[float, float]  # ambient illumination
    cast: tuple[float, float, float]  # colour of the ambient light
    sky: tuple[tuple[float, float, float], tuple[float, float, float]]  # top, horizon
    lamps: float = 0.0  # lamp emission; 0 in daylight
    glare: float = 0.0  # halo radius around lamps, as a fraction of the image size
    pools: float = 0.0  # light cast on the ground by street lamps and our own headlights
    wet: bool = False  # lamps reflect in the road
    rain: float = 0.0  # rain streak density
    rain_level: float = 0.0  # brightness of the streaks
    fog: tuple[float, float] = (0.0, 0.0)  # extinction per unit of distance
    haze: tuple[float, float, float] = (0.8, 0.8, 0.8)  # colour of the fog
    saturation: float = 1.0
    blur: tuple[float, float] = (0.0, 0.0)  # Gaussian radius in pixels at 256 px
    noise: tuple[float, float] = (0.004, 0.012)  # sensor noise sigma


LOOKS = {
    "daytime_clear": _Look(
        gain=(0.95, 1.1), cast=(1.0, 1.0, 1.0), sky=((0.3, 0.52, 0.85), (0.72, 0.82, 0.94))
    ),
    "night_sunny": _Look(
        gain=(0.2, 0.3),
        cast=(0.75, 0.85, 1.2),
        sky=((0.01, 0.012, 0.03), (0.05, 0.05, 0.08)),
        lamps=1.0,
        glare=0.03,
        pools=0.9,
        blur=(0.3, 0.7),
        noise=(0.025, 0.04),
    ),
    "dusk_rainy": _Look(
        gain=(0.4, 0.55),
        cast=(1.15, 0.88, 0.78),
        sky=((0.22, 0.2, 0.3), (0.75, 0.48, 0.36)),
        lamps=0.7,
        glare=0.035,
        pools=0.35,
        wet=True,
        rain=1.0,
        rain_level=0.75,
        saturation=0.8,
        blur=(0.6, 1.0),
        noise=(0.012, 0.02),
    ),
    "night_rainy": _Look(
        gain=(0.16, 0.24),
        cast=(0.8, 0.85, 1.1),
        sky=((0.015, 0.015, 0.025), (0.06, 0.055, 0.07)),
        lamps=1.0,
        glare=0.05,
        pools=0.7,
        wet=True,
        rain=1.4,
        rain_level=0.35,
        saturation=0.8,
        blur=(0.8, 1.3),
        noise=(0.03, 0.05),
    ),
    "daytime_foggy": _Look(
        gain=(0.85, 1.0),
        cast=(0.97, 1.0, 1.03),
        sky=((0.78, 0.8, 0.82), (0.8, 0.81, 0.83)),
        fog=(0.2, 0.4),
        haze=(0.78, 0.8, 0.82),
        saturation=0.7,
        blur=(0.3, 0.6),
        noise=(0.006, 0.012),
    ),
}


@dataclass(frozen=True)
class SynthReport:
    """What `synthesize` wrote: the conversion of its VOC tree, and objects per class."""

    convert: ConvertReport
    counts: dict[str, tuple[int, ...]]  # domain -> number of objects of each class


Progress = Callable[[int, int], None]
"""Called as `progress(images_done, images_total)` while rendering."""


def synthesize(
    out: Path | str,
    *,
    seed: int = 0,
    images_per_domain: int = 200,
    size: int = 256,
    progress: Progress | None = None,
) -> SynthReport:
    """Render the benchmark into `out`: a Diverse Weather VOC tree, its COCO json and the spec.

    Writes `out/voc/<domain>/VOC2007/{JPEGImages,Annotations,ImageSets/Main/{train,test}.txt}`
    (square `size` px JPEGs; the first 75% of each domain's images are `train`), then
    converts that tree with `convert_voc` into `out/annotations/` and `out/clipgap-data.json`.
    """
    out = Path(out)
    _check_arguments(out, seed, images_per_domain, size)
    voc_root = out / VOC_DIR
    total, counts = images_per_domain * len(DOMAINS), {}
    for d, domain in enumerate(DOMAINS):
        voc = voc_root / domain / "VOC2007"
        deck = _Deck(_rng(seed, d))
        per_class = [0] * len(CLASSES)
        for i in range(images_per_domain):
            image_id = f"{i:06d}"
            rendered = _render_scene(_plan_scene(size, deck, (seed, d, i)))
            pixels = _apply_look(LOOKS[domain], rendered, _rng(seed, d, i, 1))
            _write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", pixels)
            _write_xml(voc / "Annotations" / f"{image_id}.xml", image_id, size, rendered.boxes)
            for label, _ in rendered.boxes:
                per_class[label] += 1
            if progress:
                progress(d * images_per_domain + i + 1, total)
        counts[domain] = tuple(per_class)
        n_train = min(images_per_domain - 1, max(1, round(TRAIN_FRACTION * images_per_domain)))
        ids = [f"{i:06d}\n" for i in range(images_per_domain)]
        for split, lines in (("train", ids[:n_train]), ("test", ids[n_train:])):
            text = "".join(lines)
            atomic_write(voc / "ImageSets" / "Main" / f"{split}.txt", lambda tmp, t=text: tmp.write_text(t))
    return SynthReport(convert_voc(voc_root, out), counts)


def render_preview(seed: int = 0, size: int = 256, columns: int = 4) -> Image.Image:
    """A grid of `columns` scenes (columns), each rendered in the five domains (rows).

    Returned with a 256-colour palette (octree, dithered), which keeps the class colours
    and makes a PNG a quarter of the size: sensor noise defeats lossless compression.
    """
    gap = max(2, size // 64)
    grid = Image.new("RGB", (columns * (size + gap) - gap, len(DOMAINS) * (size + gap) - gap), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=max(10, size // 14))
    deck = _Deck(_rng(seed, _PREVIEW))
    for c in range(columns):
        rendered = _render_scene(_plan_scene(size, deck, (seed, _PREVIEW, c)))
        for d, domain in enumerate(DOMAINS):
            pixels = _apply_look(LOOKS[domain], rendered, _rng(seed, _PREVIEW, c, d + 1))
            grid.paste(Image.fromarray(pixels), (c * (size + gap), d * (size + gap)))
            if c == 0:
                left, top, right, bottom = draw.textbbox(
                    (gap * 2, d * (size + gap) + gap * 2), domain, font=font
                )
                draw.rectangle([left - gap, top - gap, right + gap, bottom + gap], fill=(0, 0, 0))
                draw.text((gap * 2, d * (size + gap) + gap * 2), domain, fill=(255, 255, 255), font=font)
    return grid.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG)


def _check_arguments(out: Path, seed: int, images_per_domain: int, size: int) -> None:
    if out.exists() and not out.is_dir():
        raise ClipgapError(f"{out} is a file; choose a directory for the synthetic dataset")
    if seed < 0:
        raise ClipgapError(f"--seed {seed} is negative; use a seed >= 0")
    if images_per_domain < 2:
        raise ClipgapError(
            f"--images-per-domain {images_per_domain} is too few: each domain needs a train and a test image"
        )
    if not SIZES[0] <= size <= SIZES[1]:
        raise ClipgapError(f"--size {size} is out of range; use {SIZES[0]} to {SIZES[1]} pixels")


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


class _Deck:
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


def _plan_scene(size: int, deck: _Deck, key: tuple[int, ...]) -> _Scene:
    """Where the horizon is and which objects stand where; a class that finds no place
    stays on top of the deck for the next object."""
    rng = _rng(*key, 0)
    horizon = round(size * rng.uniform(0.36, 0.46))
    objects: list[_Object] = []
    for _ in range(int(rng.integers(3, 8))):
        placed = _place(rng, size, horizon, deck.peek(), objects)
        if placed is not None:
            objects.append(placed)
            deck.pop()
    return _Scene(size, horizon, tuple(objects), (*key, 2))


def _place(rng, size: int, horizon: int, label: int, objects: list[_Object]) -> _Object | None:
    w_ref, h_ref = _EXTENT[CLASSES[label]]
    s_min = MIN_SIDE / max(w_ref, h_ref)
    for _ in range(12):
        scale = s_min ** (1 - rng.random())  # log-uniform: small, far objects are common
        w = max(3, round(w_ref * scale * size * rng.uniform(0.9, 1.1)))
        h = max(3, round(h_ref * scale * size * rng.uniform(0.9, 1.1)))
        base = min(size, round(horizon + scale * (size - horizon)))
        x = int(rng.integers(0, size - w + 1))
        candidate = _Object(label, x, max(0, base - h), w, h, scale, 1 if rng.random() < 0.5 else -1)
        if _visible_enough([*objects, candidate]):
            return candidate
    return None


def _visible_enough(objects: list[_Object]) -> bool:
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


def _pick(rng, palette: str) -> Colour:
    base = _PALETTE[palette][int(rng.integers(len(_PALETTE[palette])))]
    return tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in base)  # type: ignore[return-value]


def _render_scene(scene: _Scene) -> _Rendered:
    rng = _rng(*scene.style_key)
    S, hz = scene.size, scene.horizon
    image = Image.new("RGB", (S, S), (0, 0, 0))
    image.paste(_pick(rng, "ground"), (0, hz, S, S))
    draw = ImageDraw.Draw(image)
    far = Image.new("L", (S, S), 0)  # the skyline, which the sky must not paint over
    lamps: list[_Lamp] = []
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
        lamps += [_Lamp(o.x + x, o.y + y, r, kind, o.scale, (o.x + x, ground)) for x, y, r, kind in lights]
    # A lamp shines only where nothing nearer hides it.
    visible = tuple(
        lamp
        for lamp in lamps
        if 0 <= lamp.x < S and 0 <= lamp.y < S and scale[int(lamp.y), int(lamp.x)] <= lamp.depth + 1e-6
    )
    albedo = np.asarray(image, dtype=np.float32) / 255
    return _Rendered(albedo, scale, visible, tuple(boxes), hz)


def _draw_skyline(draw, far, rng, S: int, hz: int, lamps: list[_Lamp]) -> None:
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
                            _Lamp(wx + 0.22 * step, wy + 0.25 * step, 0.3 * step, "window", 0.03, None)
                        )
        else:
            height = rng.uniform(0.06, 0.16) * S
            crown = [x, hz - height, x + width * 0.8, hz - height * 0.3]
            draw.rectangle([x + width * 0.35, hz - height * 0.4, x + width * 0.45, hz + 1], fill=(70, 50, 35))
            draw.ellipse(crown, fill=(40, 85 + int(rng.integers(0, 40)), 40))
            far.ellipse(crown, fill=255)
            far.rectangle([x + width * 0.35, hz - height * 0.4, x + width * 0.45, hz + 1], fill=255)
        x += width + rng.uniform(-0.02, 0.05) * S


def _draw_road(draw, rng, S: int, hz: int, lamps: list[_Lamp]) -> None:
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
                _Lamp(bx - side * arm, by - height + radius, radius, "street", scale, (bx - side * arm, by))
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


def _apply_look(look: _Look, scene: _Rendered, rng: np.random.Generator) -> np.ndarray:
    """Light and photograph a rendered scene as `look` says: (S, S, 3) uint8 RGB."""
    S = scene.albedo.shape[0]
    light = np.float32(rng.uniform(*look.gain)) * np.asarray(look.cast, np.float32)
    light = light * rng.uniform(0.95, 1.05, 3).astype(np.float32)
    if look.pools:
        light = light + look.pools * _pools(scene, S)[..., None] * np.asarray(
            _LAMP_LIGHT["street"], np.float32
        )
    image = scene.albedo * light

    rows = np.clip(np.arange(S, dtype=np.float32) / max(scene.horizon, 1), 0, 1)[:, None]
    top, bottom = (np.asarray(c, np.float32) * np.float32(rng.uniform(0.9, 1.1)) for c in look.sky)
    sky = top * (1 - rows) + bottom * rows  # (S, 3), one colour per row
    image = np.where((scene.scale == 0)[..., None], sky[:, None, :], image)

    if look.fog[1]:
        # Koschmieder: transmission exp(-beta * distance), distance ~ 1 / perspective scale.
        distance = 1 / np.maximum(scene.scale, 0.02)
        transmission = np.exp(-rng.uniform(*look.fog) * distance).astype(np.float32)[..., None]
        haze = np.asarray(look.haze, np.float32) * np.float32(rng.uniform(0.95, 1.05))
        image = image * transmission + haze * (1 - transmission)
    if look.lamps:
        image = image + look.lamps * _lamp_light(scene, look, S)
    if look.rain:
        streaks = _rain(rng, look.rain, S)[..., None]
        image = image * (1 - streaks) + look.rain_level * streaks
    if look.saturation != 1:
        grey = image.mean(axis=2, keepdims=True)
        image = grey + look.saturation * (image - grey)

    pixels = _to_uint8(image)
    radius = rng.uniform(*look.blur) * S / 256
    if radius > 0:
        pixels = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius)))
    noise = rng.standard_normal((S, S, 3), dtype=np.float32) * np.float32(rng.uniform(*look.noise) * 255)
    return np.clip(pixels + noise, 0, 255).round().astype(np.uint8)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _pools(scene: _Rendered, S: int) -> np.ndarray:
    """(S, S) float32 in [0, 1]: light on the ground under street lamps and ahead of our car."""
    layer = Image.new("L", (S, S), 0)
    draw = ImageDraw.Draw(layer)
    draw.ellipse([0.2 * S, 0.82 * S, 0.8 * S, 1.2 * S], fill=170)  # our own low beams
    for lamp in scene.lamps:
        if lamp.kind == "street" and lamp.ground:
            gx, gy = lamp.ground
            rx, ry = 0.3 * S * lamp.depth, 0.08 * S * lamp.depth
            draw.ellipse([gx - rx, gy - ry, gx + rx, gy + ry], fill=255)
    return np.asarray(layer.filter(ImageFilter.GaussianBlur(0.05 * S)), dtype=np.float32) / 255


def _lamp_light(scene: _Rendered, look: _Look, S: int) -> np.ndarray:
    """(S, S, 3) float32: lamps, their glare halos and, on a wet road, their reflections.

    Lit windows glow without a halo: they are dim, and their halos would merge into a blob.
    """
    layer = Image.new("RGB", (S, S), (0, 0, 0))
    draw = ImageDraw.Draw(layer)

    def lamp_disc(lamp: _Lamp) -> None:
        colour = tuple(int(255 * c) for c in _LAMP_LIGHT[lamp.kind])
        draw.ellipse(
            [lamp.x - lamp.radius, lamp.y - lamp.radius, lamp.x + lamp.radius, lamp.y + lamp.radius],
            fill=colour,
        )
        if look.wet and lamp.ground:
            gx, gy = lamp.ground
            reflection = [gx - 0.7 * lamp.radius, gy, gx + 0.7 * lamp.radius, gy + 0.14 * S * lamp.depth]
            draw.rectangle(reflection, fill=tuple(c // 2 for c in colour))

    for lamp in scene.lamps:
        if lamp.kind != "window":
            lamp_disc(lamp)
    halo = np.asarray(layer.filter(ImageFilter.GaussianBlur(look.glare * S)), dtype=np.float32) / 255
    for lamp in scene.lamps:
        if lamp.kind == "window":
            lamp_disc(lamp)
    return np.asarray(layer, dtype=np.float32) / 255 + 8 * halo


def _rain(rng: np.random.Generator, density: float, S: int) -> np.ndarray:
    """(S, S) float32 in [0, 0.6]: slanted, slightly blurred rain streaks."""
    n = int(density * 300 * (S / 256) ** 2)
    angle = rng.uniform(-0.3, 0.3) + rng.normal(0, 0.04, n)
    length = rng.uniform(0.02, 0.07, n) * S
    x0, y0 = rng.uniform(-0.1 * S, 1.1 * S, n), rng.uniform(-0.1 * S, S, n)
    x1, y1 = x0 + np.sin(angle) * length, y0 + np.cos(angle) * length
    level = rng.integers(90, 256, n)
    layer = Image.new("L", (S, S), 0)
    draw = ImageDraw.Draw(layer)
    width = max(1, round(S / 320))
    for xa, ya, xb, yb, v in zip(
        x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist(), level.tolist(), strict=True
    ):
        draw.line([(xa, ya), (xb, yb)], fill=v, width=width)
    blurred = layer.filter(ImageFilter.GaussianBlur(0.4 * S / 256))
    return np.asarray(blurred, dtype=np.float32) * (0.6 / 255)


def _write_jpeg(path: Path, pixels: np.ndarray) -> None:
    image = Image.fromarray(pixels)
    atomic_write(path, lambda tmp: image.save(tmp, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0"))


def _write_xml(path: Path, image_id: str, size: int, boxes) -> None:
    """A VOC annotation: 1-based inclusive corners, so pixel box [x0, x1) is xmin=x0+1, xmax=x1."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "VOC2007"
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    size_el = ET.SubElement(ann, "size")
    for key, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(size_el, key).text = str(value)
    for label, (x0, y0, x1, y1) in boxes:
        obj = ET.SubElement(ann, "object")
        for key, value in (
            ("name", CLASSES[label]),
            ("pose", "Unspecified"),
            ("truncated", 0),
            ("difficult", 0),
        ):
            ET.SubElement(obj, key).text = str(value)
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bndbox, key).text = str(value)
    ET.indent(ann)
    text = ET.tostring(ann, encoding="unicode") + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
