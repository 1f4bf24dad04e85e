"""Versions of clipgap and of the stack it runs on, as recorded with every artifact."""

from __future__ import annotations

from functools import cache
from importlib import metadata

# Distribution names on the package index, keyed by the name we report.
_DISTRIBUTIONS = {
    "clipgap": "clipgap",
    "torch": "torch",
    "mmdet": "mmdet",
    "mmcv": "mmcv",
    "mmengine": "mmengine",
    "open_clip": "open_clip_torch",
}


@cache
def stack_versions() -> dict[str, str | None]:
    """`{"clipgap": "0.1.0", "torch": "2.13.0", ...}`; None for a package that is not installed."""
    versions: dict[str, str | None] = {}
    for name, dist in _DISTRIBUTIONS.items():
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
