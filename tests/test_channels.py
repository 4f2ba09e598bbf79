"""The -chn grammar (`jaxsal.channels`), one parser for the command and for Python: numbers,
ranges, 'all', mixtures; every bad word named in a one-line message. No JAX."""
from __future__ import annotations

import numpy as np
import pytest

import tiny_net
from jaxsal import cli
from jaxsal.channels import describe_channels, expand_channels, parse_channels
from jaxsal.errors import UsageError
from jaxsal.request import Request

GOOD = [
    (["294", "23"], (294, 23)),
    ("294,23", (294, 23)),
    ("1-4", (1, 2, 3, 4)),
    (["1-4", "60"], (1, 2, 3, 4, 60)),
    ("1-4 60", (1, 2, 3, 4, 60)),
    ("3-3", (3,)),
    ([60, 125], (60, 125)),
    (60, (60,)),
    (["1-2", 7, "7"], (1, 2, 7, 7)),  # duplicates are kept: one figure row each
    (range(1, 4), (1, 2, 3)),
    (np.arange(2, 4), (2, 3)),
    (["-1"], (-1,)),  # parsed; the layer's range check reports it
    ("all", "all"),
    (["all"], "all"),
]


@pytest.mark.parametrize("value, expected", GOOD)
def test_selections_parse_to_numbers_or_all(value, expected):
    assert parse_channels(value) == expected
    assert parse_channels(parse_channels(value)) == expected  # canonical: parsing again is a no-op


BAD = [
    ("abc", "got 'abc'"),
    (["60", "1e3"], "got '1e3'"),
    ("1.5", "got '1.5'"),
    ("5-2", "the range '5-2' is reversed (FIRST-LAST with FIRST <= LAST): write 2-5"),
    ("1-", "got '1-'"),
    ("-", "got '-'"),
    ("1--3", "got '1--3'"),
    (["1", ""], "an empty channel"),
    ([], "needs at least one channel number"),
    ("all 3", "'all' (every channel of the layer) stands alone"),
    (None, "got None"),
    (1.5, "got 1.5"),
    (True, "got True"),
    ([1, 2.0], "got 2.0"),
]


@pytest.mark.parametrize("value, message", BAD)
def test_bad_words_are_named(value, message):
    with pytest.raises(UsageError) as error:
        parse_channels(value, "-chn")
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith(("-chn", "no channel"))


def test_all_and_ranges_against_the_layer():
    assert expand_channels("all", 4) == (1, 2, 3, 4)
    assert expand_channels((3, 1), 4) == (3, 1)
    spec = tiny_net.TINY
    assert spec.check_channels("conv3", "all") == tuple(range(1, 17))
    assert spec.check_channels("conv3", ["1-3", 16]) == (1, 2, 3, 16)
    with pytest.raises(UsageError, match=r"channel number\(s\) 17, 18, 19, 20, 21 and 4 more out "
                                         r"of range for TinyNet layer 'conv3', which has 16"):
        spec.check_channels("conv3", "10-25")


def test_the_command_and_python_share_the_grammar():
    base = ["dnn_saliency", "-net", "TinyNet", "-layer", "conv3", "-stim", "x.stim.csv", "-out",
            "o", "-save_maps", "-maps_format", "zarr"]
    for words, python in [(["-chn", "294", "23"], [294, 23]), (["--chn=294,23"], "294 23"),
                          (["-chn", "1-4", "60"], ["1-4", 60]), (["-chn", "all"], "all"),
                          (["--chn=1-4,60"], "1-4,60"), (["-chn", "-1", "5"], [-1, 5])]:
        request = cli.parse_args(base + words)
        assert request == Request(net="TinyNet", layer="conv3", channels=python,
                                  stim="x.stim.csv", out="o", save_maps=True,
                                  maps_format="zarr"), words
    assert cli.join_channel_values(["-chn", "abc", "-stim", "x"]) == ["--chn=abc", "-stim", "x"]
    for word in ("abc", "1e3", "9-2"):  # named, not "needs at least one channel number"
        with pytest.raises(UsageError, match=f"'{word}'"):
            cli.parse_args(base + ["-chn", word])
    with pytest.raises(UsageError, match="needs at least one channel"):
        cli.parse_args(base + ["-chn", "-stim", "y.stim.csv"])


def test_channels_are_described_in_the_grammar():
    assert describe_channels((1, 2, 3, 4, 60)) == "1-4 60"
    assert describe_channels((294, 23)) == "294 23"
    assert describe_channels(tuple(range(1, 257))) == "1-256"
    assert describe_channels(tuple(range(1, 40, 2))).endswith("... (20 channels)")
