"""Range checks for numeric command-line options, run as click parses each value.

An option takes one as its callback (`typer.Option("--lr", callback=positive)`): a value that
is not finite or out of range is refused in one line naming the option, before any work.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import typer

from clipgap_cli.errors import ClipgapError

Check = Callable[[typer.CallbackParam, float | int | None], float | int | None]


def _check(accepts: Callable[[float | int], bool], rule: str) -> Check:
    def check(param: typer.CallbackParam, value: float | int | None) -> float | int | None:
        if value is not None and not (math.isfinite(value) and accepts(value)):
            raise ClipgapError(f"{param.opts[0]} {value} is out of range; give {rule}")
        return value

    return check


def integer(low: int, high: int | None = None) -> Check:
    """Accepts integers in low..high (no upper bound without `high`)."""
    if high is None:
        return _check(lambda v: v >= low, f"an integer >= {low}")
    return _check(lambda v: low <= v <= high, f"an integer in {low}..{high}")


positive = _check(lambda v: v > 0, "a finite value > 0")
"""Learning rates and other scales."""
probability = _check(lambda v: 0 <= v <= 1, "a value in [0, 1]")
count = integer(1)
"""Iterations, images, processes: at least one."""
seed = integer(0, 2**32 - 1)
"""numpy's seeds, which mmengine and the data renderer draw from, are 32-bit and unsigned."""
port = integer(1, 65535)
