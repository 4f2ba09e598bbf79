"""Which channels a run asks for: the `-chn` grammar, said once for the command and for Python.

    -chn 294 23        channel numbers, 1-based, in the order given (duplicates allowed)
    -chn 1-64          an inclusive range (first <= last)
    -chn 1-4 60        a mixture
    -chn all           every channel of the layer, in order (alone)
    --chn=294,23       commas separate as spaces do

From Python the same words, or numbers: `channels=[60, 125]`, `channels="1-64"`,
`channels=["1-4", 60]`, `channels="all"`, `channels=range(1, 65)`.

`parse_channels` reads a selection without knowing the layer (ranges are expanded, `all` stays
the word "all"); `expand_channels` gives the numbers for a layer of a given width. The layer's
range check is `NetSpec.check_channels`. No JAX, no numpy: the command checks its flags before
anything heavy is loaded.
"""
from __future__ import annotations

import numbers
import re

ALL = "all"

_NUMBER = re.compile(r"[+-]?\d+")
_RANGE = re.compile(r"(\d+)-(\d+)")
_SEPARATORS = re.compile(r"[\s,]+")

GRAMMAR = "channel numbers (1-based), ranges FIRST-LAST or 'all'"


def parse_channels(value, name: str = "-chn") -> tuple[int, ...] | str:
    """A channel selection -> a tuple of 1-based numbers, or "all".

    value: a string of tokens (`"1-4 60"`, `"294,23"`, `"all"`), a whole number, or a sequence
    of those (the command's tokens, `[60, 125]`, `["1-4", 60]`). `name` is how messages spell
    the option (`-chn` on the command line, `channels` from Python). Numbers are not
    range-checked here (the layer is not known): `NetSpec.check_channels` does that.
    UsageError names the offending token.
    """
    from jaxsal.errors import UsageError

    if value is None or isinstance(value, (bool, bytes)):
        raise UsageError(f"{name} takes {GRAMMAR}, e.g. [60, 125], '1-64' or 'all'; got {value!r}")
    items = [value] if isinstance(value, (str, numbers.Integral)) else value
    try:
        items = list(items)
    except TypeError:
        raise UsageError(f"{name} takes {GRAMMAR}, e.g. [60, 125], '1-64' or 'all'; got "
                         f"{value!r}") from None
    tokens: list[str | int] = []
    for item in items:
        if isinstance(item, numbers.Integral) and not isinstance(item, bool):
            tokens.append(int(item))
        elif isinstance(item, str):
            text = item.strip()
            if not text:
                raise UsageError(f"{name}: an empty channel in {value!r}; it takes {GRAMMAR}")
            tokens.extend(t for t in _SEPARATORS.split(text) if t)
        else:
            raise UsageError(f"{name} takes {GRAMMAR}, got {item!r}")
    if not tokens:
        raise UsageError(f"no channel given: {name} needs at least one channel number, e.g. "
                         f"{name} 1")
    if ALL in tokens:
        if len(tokens) > 1:
            raise UsageError(f"{name}: 'all' (every channel of the layer) stands alone, got "
                             f"{' '.join(map(str, tokens))}")
        return ALL
    chosen: list[int] = []
    for token in tokens:
        chosen.extend(_token_channels(token, name))
    return tuple(chosen)


def _token_channels(token: str | int, name: str) -> list[int]:
    from jaxsal.errors import UsageError

    if isinstance(token, int):
        return [token]
    if _NUMBER.fullmatch(token):
        return [int(token)]
    match = _RANGE.fullmatch(token)
    if match is None:
        raise UsageError(f"{name} takes {GRAMMAR}, got {token!r}")
    first, last = int(match.group(1)), int(match.group(2))
    if first > last:
        raise UsageError(f"{name}: the range {token!r} is reversed (FIRST-LAST with FIRST <= "
                         f"LAST): write {last}-{first}")
    return list(range(first, last + 1))


def expand_channels(selection: tuple[int, ...] | str, width: int) -> tuple[int, ...]:
    """The 1-based channel numbers of a parsed selection for a layer of `width` channels."""
    if selection == ALL:
        return tuple(range(1, width + 1))
    return tuple(selection)


def describe_channels(channels: tuple[int, ...], limit: int = 8) -> str:
    """Channels in the -chn grammar, runs as ranges: (1, 2, 3, 4, 60) -> '1-4 60'; at most
    `limit` words (then '... (N channels)')."""
    words: list[str] = []
    i = 0
    while i < len(channels):
        j = i
        while j + 1 < len(channels) and channels[j + 1] == channels[j] + 1:
            j += 1
        words.append(str(channels[i]) if j == i else f"{channels[i]}-{channels[j]}")
        i = j + 1
    if len(words) > limit:
        return " ".join(words[:limit]) + f" ... ({len(channels)} channels)"
    return " ".join(words)


def is_channel_token(token: str) -> bool:
    """Whether a command-line word after -chn belongs to it: anything but another flag (a
    negative number is a channel, for the range check to report it)."""
    return not token.startswith("-") or bool(_NUMBER.fullmatch(token))
