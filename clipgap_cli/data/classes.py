"""Class lists as commands take them: one parser, which keeps each name as given."""

from __future__ import annotations

from collections.abc import Sequence

from clipgap_cli.errors import ClipgapError


def parse_classes(text: str, option: str = "--classes") -> list[str]:
    """`"car, Bus,tram"` -> `["car", "Bus", "tram"]`: split at commas, spaces around each name
    dropped, case kept; refused in one sentence naming `option` if a name is empty or repeated."""
    names = [name.strip() for name in text.split(",")]
    if not any(names):
        raise ClipgapError(f'{option} is empty; give class names separated by commas, e.g. "car,bus,tram"')
    if not all(names):
        raise ClipgapError(f"{option} {text!r} has an empty class name; separate the names by single commas")
    return check_classes(names, option)


def check_classes(names: Sequence[str], where: str) -> list[str]:
    """`names` as a list, refused unless there is at least one, none empty and none twice
    (`where` says where they came from)."""
    if not names or not all(names):
        raise ClipgapError(f"{where} has an empty class name or none; every class needs a name")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ClipgapError(f"{where} names {', '.join(repeated)} more than once; name each class once")
    return list(names)
