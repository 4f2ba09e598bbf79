"""Checks of values handed in from Python: type and range, at the boundary.

A wrong type caught here is one line naming the argument (`UsageError`), instead of a
`TypeError` from deep inside (difflib, pathlib, JAX). Each check is `check(name, value) ->
value` (normalised: a tuple for a list, a float for a bound, an int for a count), so a table of
them validates a record field by field (`jaxsal.request.FIELD_CHECKS`). No dependencies.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Any, Callable

from jaxsal.errors import UsageError

Check = Callable[[str, Any], Any]


def _got(value) -> str:
    """`value` for a message: its repr, cut short, and its type when the repr hides it."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return text if isinstance(value, (int, float, type(None))) else f"{text} ({type(value).__name__})"


def name(what: str, value) -> str:
    """A name (str): a network, a layer, a colormap."""
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a name (str), got {_got(value)}")
    return value


def path(what: str, value):
    """A file or folder path: str or os.PathLike (returned as given)."""
    if not isinstance(value, (str, os.PathLike)):
        raise UsageError(f"{what} must be a path (str or os.PathLike), got {_got(value)}")
    return value


def flag(what: str, value) -> bool:
    """True or False."""
    if not isinstance(value, bool):
        raise UsageError(f"{what} must be True or False, got {_got(value)}")
    return value


def whole_number(what: str, value, minimum: int | None = None) -> int:
    """An int (not a bool), at least `minimum` if given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"{what} must be a whole number, got {_got(value)}")
    if minimum is not None and value < minimum:
        raise UsageError(f"{what} must be at least {minimum}, got {value}")
    return int(value)


def finite_number(what: str, value) -> float:
    """A real number other than NaN and +-inf."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f"{what} must be a number, got {_got(value)}")
    if not math.isfinite(value):
        raise UsageError(f"{what} must be a finite number (colour bounds must be finite), "
                         f"got {value}")
    return float(value)


def one_of(choices: tuple[str, ...]) -> Check:
    """One of `choices` (strings)."""
    def check(what: str, value) -> str:
        if not isinstance(value, str) or value not in choices:
            listed = " or ".join(choices) if len(choices) == 2 else f"one of {', '.join(choices)}"
            raise UsageError(f"{what} must be {listed}, got {_got(value)}")
        return value

    return check


def optional(check: Check) -> Check:
    """None, or what `check` accepts."""
    def check_optional(what: str, value):
        return None if value is None else check(what, value)

    return check_optional


def at_least(minimum: int) -> Check:
    """A whole number >= `minimum`."""
    return lambda what, value: whole_number(what, value, minimum)


def image_list(what: str, value) -> list:
    """A list of images; one image (a path, a PIL image) is refused rather than iterated."""
    if isinstance(value, (str, bytes, os.PathLike)) or hasattr(value, "getpixel"):
        raise UsageError(f"{what} must be a list of images (got one {type(value).__name__}): "
                         f"pass [image]")
    try:
        return list(value)
    except TypeError:
        raise UsageError(f"{what} must be a list of paths, PIL images or uint8 arrays; got "
                         f"{type(value).__name__}") from None
