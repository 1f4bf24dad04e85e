"""Condition looks: how a time of day and a weather light and photograph a rendered scene.

The grid of conditions is time of day {day, evening, night} x weather {clear, cloudy, rain,
snow, fog, stormy}. A look is illumination and colour cast, the sky and its clouds, lamps
that glow and glare after dark, reflections on a wet road, rain streaks, snow flakes and
snow on the ground, fog that thickens with distance, blur and sensor noise. The five
benchmark domains are fixed members of the grid with their own calibrated looks; the other
conditions start from their time of day's clear look and add their weather.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from clipgap_cli.data.synth.shapes import Lamp, Rendered

TIMES = ("day", "evening", "night")
WEATHERS = ("clear", "cloudy", "rain", "snow", "fog", "stormy")
Condition = tuple[str, str]  # (time of day, weather)
CONDITIONS: tuple[Condition, ...] = tuple((time, weather) for time in TIMES for weather in WEATHERS)
DOMAIN_CONDITIONS: dict[str, Condition] = {
    "daytime_clear": ("day", "clear"),
    "night_sunny": ("night", "clear"),
    "dusk_rainy": ("evening", "rain"),
    "night_rainy": ("night", "rain"),
    "daytime_foggy": ("day", "fog"),
}

# Emitted light of each kind of lamp, in [0, 1] per channel.
_LAMP_LIGHT = {
    "head": (1.0, 0.95, 0.8),
    "tail": (0.9, 0.1, 0.05),
    "street": (1.0, 0.72, 0.35),
    "window": (0.55, 0.45, 0.25),
}

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Look:
    """How a condition lights and photographs a scene. Pairs are per-image (low, high) ranges."""

    gain: tuple[float, float]  # ambient illumination
    cast: RGB  # colour of the ambient light
    sky: tuple[RGB, RGB]  # top, horizon
    lamps: float = 0.0  # lamp emission; 0 in daylight
    glare: float = 0.0  # halo radius around lamps, as a fraction of the image size
    pools: float = 0.0  # light cast on the ground by street lamps and our own headlights
    wet: bool = False  # lamps reflect in the road
    rain: float = 0.0  # rain streak density
    rain_level: float = 0.0  # brightness of the streaks and flakes
    fog: tuple[float, float] = (0.0, 0.0)  # extinction per unit of distance
    haze: RGB = (0.8, 0.8, 0.8)  # colour of the fog
    saturation: float = 1.0
    blur: tuple[float, float] = (0.0, 0.0)  # Gaussian radius in pixels at 256 px
    noise: tuple[float, float] = (0.004, 0.012)  # sensor noise sigma
    clouds: float = 0.0  # how much of the sky a cloud layer covers
    cloud: RGB = (0.6, 0.6, 0.62)  # colour of the clouds
    snow: float = 0.0  # snow flake density
    cover: float = 0.0  # how white the ground is under snow
    wind: float = 0.0  # slant of rain streaks and flakes, in radians


# The benchmark domains' looks, calibrated for `clipgap data synth`.
_BENCHMARK = {
    "daytime_clear": Look(
        gain=(0.95, 1.1), cast=(1.0, 1.0, 1.0), sky=((0.3, 0.52, 0.85), (0.72, 0.82, 0.94))
    ),
    "night_sunny": Look(
        gain=(0.2, 0.3),
        cast=(0.75, 0.85, 1.2),
        sky=((0.01, 0.012, 0.03), (0.05, 0.05, 0.08)),
        lamps=1.0,
        glare=0.03,
        pools=0.9,
        blur=(0.3, 0.7),
        noise=(0.025, 0.04),
    ),
    "dusk_rainy": Look(
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
    "night_rainy": Look(
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
    "daytime_foggy": Look(
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

# Each time of day's clear look, which the weathers change.
_CLEAR = {
    "day": _BENCHMARK["daytime_clear"],
    "evening": Look(
        gain=(0.45, 0.6),
        cast=(1.15, 0.88, 0.75),
        sky=((0.25, 0.22, 0.38), (0.85, 0.52, 0.32)),
        lamps=0.6,
        glare=0.03,
        pools=0.3,
        blur=(0.2, 0.5),
        noise=(0.01, 0.018),
    ),
    "night": _BENCHMARK["night_sunny"],
}


def _brightness(look: Look) -> float:
    """The mean ambient gain, capped at 1: about 1 by day, 0.5 in the evening, 0.25 at night."""
    return min(1.0, sum(look.gain) / 2)


def _times(pair: tuple[float, float], factor: float) -> tuple[float, float]:
    return (pair[0] * factor, pair[1] * factor)


def _overcast(look: Look, amount: float, level: float) -> tuple[RGB, RGB]:
    """The sky turned `amount` of the way towards a flat grey `level` times as bright as it was."""
    grey = [level * sum(colour) / 3 for colour in look.sky]
    return tuple(  # type: ignore[return-value]
        tuple((1 - amount) * c + amount * g for c in colour) for colour, g in zip(look.sky, grey, strict=True)
    )


def _add_weather(look: Look, weather: str) -> Look:
    """`look` (a clear time of day) with `weather` added."""
    b = _brightness(look)
    streaks = 0.3 + 0.5 * b  # rain and snow catch the light: bright by day, dim at night
    blur = (max(look.blur[0], 0.5), max(look.blur[1], 0.9))
    if weather == "clear":
        return look
    if weather == "cloudy":
        return replace(
            look,
            gain=_times(look.gain, 0.72),
            sky=_overcast(look, 0.85, 0.8),
            clouds=0.8,
            cloud=(0.62 * b, 0.62 * b, 0.65 * b),
            saturation=0.75 * look.saturation,
        )
    if weather == "rain":
        return replace(
            look,
            gain=_times(look.gain, 0.8),
            sky=_overcast(look, 0.6, 0.7),
            wet=True,
            rain=1.0,
            rain_level=streaks,
            saturation=0.8 * look.saturation,
            blur=blur,
        )
    if weather == "snow":
        return replace(
            look,
            sky=_overcast(look, 0.8, 1.1),
            snow=1.0,
            cover=0.55,
            rain_level=streaks + 0.15,
            fog=(0.03, 0.06),
            haze=(0.85 * b, 0.86 * b, 0.9 * b),
            saturation=0.7 * look.saturation,
        )
    if weather == "fog":
        haze = (0.78 * b, 0.8 * b, 0.82 * b)
        return replace(
            look,
            sky=(haze, haze),
            fog=(0.2, 0.4),
            haze=haze,
            glare=1.5 * look.glare,
            saturation=0.7 * look.saturation,
            blur=(max(look.blur[0], 0.3), max(look.blur[1], 0.6)),
        )
    if weather == "stormy":
        return replace(
            look,
            gain=_times(look.gain, 0.5),
            sky=_overcast(look, 0.9, 0.45),
            clouds=1.0,
            cloud=(0.3 * b, 0.3 * b, 0.34 * b),
            wet=True,
            rain=1.8,
            rain_level=streaks,
            wind=0.5,
            saturation=0.6 * look.saturation,
            blur=blur,
            noise=(max(look.noise[0], 0.015), max(look.noise[1], 0.03)),
        )
    raise ValueError(f"unknown weather {weather!r}; choose one of {', '.join(WEATHERS)}")


_BY_CONDITION = {condition: domain for domain, condition in DOMAIN_CONDITIONS.items()}
CONDITION_LOOKS: dict[Condition, Look] = {
    (time, weather): _BENCHMARK[_BY_CONDITION[time, weather]]
    if (time, weather) in _BY_CONDITION
    else _add_weather(_CLEAR[time], weather)
    for time, weather in CONDITIONS
}
LOOKS: dict[str, Look] = {domain: CONDITION_LOOKS[c] for domain, c in DOMAIN_CONDITIONS.items()}
"""The benchmark domains' looks, by domain name, at full severity."""


def at_severity(look: Look, severity: float) -> Look:
    """`look` moved `severity` of the way from the clear day's look towards itself.

    Every number of the look (illumination, colour cast, sky, lamps, glare, rain, fog, blur,
    noise...) is interpolated linearly between the clear day's value (severity 0: the clear
    day itself) and the look's own (severity 1: the full condition); a wet road stays wet
    at any severity above 0, its reflections as bright as the lamps that make them.
    """
    if not 0 <= severity <= 1:
        raise ValueError(f"severity {severity} is outside [0, 1]")
    clear = LOOKS["daytime_clear"]
    blended = {}
    for field in fields(Look):
        start, end = getattr(clear, field.name), getattr(look, field.name)
        if isinstance(end, bool):
            blended[field.name] = end and severity > 0
        else:
            blended[field.name] = _lerp(start, end, severity)
    return Look(**blended)


def _lerp(start, end, t: float):
    """start + t * (end - start) for numbers and (nested) tuples of numbers; exact at t = 0 and 1."""
    if isinstance(end, tuple):
        return tuple(_lerp(a, b, t) for a, b in zip(start, end, strict=True))
    if t == 1:
        return end
    return start + t * (end - start)


def apply_look(look: Look, scene: Rendered, rng: np.random.Generator) -> np.ndarray:
    """Light and photograph a rendered scene as `look` says: (S, S, 3) uint8 RGB.

    Effects a look does not use draw nothing from `rng`, so adding an effect leaves the
    images of looks without it unchanged.
    """
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
    if look.clouds:
        cover = look.clouds * _cloud_field(rng, S)[..., None] * (scene.scale == 0)[..., None]
        image = image * (1 - cover) + np.asarray(look.cloud, np.float32) * cover
    if look.cover:
        ground = look.cover * _ground(scene)[..., None]
        image = image * (1 - ground) + 0.95 * light * ground

    if look.fog[1]:
        # Koschmieder: transmission exp(-beta * distance), distance ~ 1 / perspective scale.
        distance = 1 / np.maximum(scene.scale, 0.02)
        transmission = np.exp(-rng.uniform(*look.fog) * distance).astype(np.float32)[..., None]
        haze = np.asarray(look.haze, np.float32) * np.float32(rng.uniform(0.95, 1.05))
        image = image * transmission + haze * (1 - transmission)
    if look.lamps:
        image = image + look.lamps * _lamp_light(scene, look, S)
    if look.rain:
        streaks = _rain(rng, look.rain, S, look.wind)[..., None]
        image = image * (1 - streaks) + look.rain_level * streaks
    if look.snow:
        flakes = _flakes(rng, look.snow, S, look.wind)[..., None]
        image = image * (1 - flakes) + look.rain_level * flakes
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


def _pools(scene: Rendered, S: int) -> np.ndarray:
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


def _lamp_light(scene: Rendered, look: Look, S: int) -> np.ndarray:
    """(S, S, 3) float32: lamps, their glare halos and, on a wet road, their reflections.

    Lit windows glow without a halo: they are dim, and their halos would merge into a blob.
    """
    layer = Image.new("RGB", (S, S), (0, 0, 0))
    draw = ImageDraw.Draw(layer)

    def lamp_disc(lamp: Lamp) -> None:
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


def _rain(rng: np.random.Generator, density: float, S: int, wind: float = 0.0) -> np.ndarray:
    """(S, S) float32 in [0, 0.6]: slanted, slightly blurred rain streaks."""
    n = int(density * 300 * (S / 256) ** 2)
    angle = rng.uniform(-0.3, 0.3) + wind + rng.normal(0, 0.04, n)
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


def _flakes(rng: np.random.Generator, density: float, S: int, wind: float) -> np.ndarray:
    """(S, S) float32 in [0, 0.9]: round snow flakes, larger and softer the nearer they fall."""
    n = int(density * 450 * (S / 256) ** 2)
    near = rng.random(n) ** 2
    radius = (0.4 + 2.2 * near) * S / 256
    x, y = rng.uniform(-0.05 * S, 1.05 * S, n), rng.uniform(-0.05 * S, 1.05 * S, n)
    x = x + wind * 0.05 * S * near  # flakes drift with the wind
    level = rng.integers(150, 256, n)
    layer = Image.new("L", (S, S), 0)
    draw = ImageDraw.Draw(layer)
    for cx, cy, r, v in zip(x.tolist(), y.tolist(), radius.tolist(), level.tolist(), strict=True):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=v)
    blurred = layer.filter(ImageFilter.GaussianBlur(0.5 * S / 256))
    return np.asarray(blurred, dtype=np.float32) * (0.9 / 255)


def _cloud_field(rng: np.random.Generator, S: int) -> np.ndarray:
    """(S, S) float32 in [0, 1]: soft cloud banks, smooth noise stretched along the horizon."""
    coarse = rng.random((6, 4)).astype(np.float32)
    field = Image.fromarray((coarse * 255).astype(np.uint8)).resize((S, S), Image.Resampling.BICUBIC)
    field = field.filter(ImageFilter.GaussianBlur(0.04 * S))
    return np.clip(np.asarray(field, dtype=np.float32) / 255 * 1.4 - 0.2, 0, 1)


def _ground(scene: Rendered) -> np.ndarray:
    """(S, S) float32: 1 where the pixel shows the ground itself (not an object or the sky)."""
    S = scene.albedo.shape[0]
    rows = np.arange(S, dtype=np.float32)
    row_scale = np.where(rows >= scene.horizon, (rows + 1 - scene.horizon) / (S - scene.horizon), -1)
    return np.isclose(scene.scale, row_scale[:, None].astype(np.float32)).astype(np.float32)
