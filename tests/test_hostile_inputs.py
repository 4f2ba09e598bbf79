"""Hostile and broken inputs (issue 16): every mistake is one line (exit 2, a `UsageError`)
naming the thing at fault, before any compute and with nothing written; nothing hangs on a FIFO
or a device; no image decode holds more than the pixel limit at once. The checkpoint reader's
bombs are in test_weights_torch_checkpoint.py.

The command runs in this process (conftest's `dnn_saliency`) on TinyNet; memory is measured in
a subprocess under an address-space limit (`memory_limit.run_limited`, slow tier).
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import shutil
import signal
import warnings

import numpy as np
import pytest
from PIL import Image

import jaxsal
import tiny_net  # noqa: F401  (registers TinyNet)
from jaxsal import stimuli
from jaxsal.request import FIELD_CHECKS, Request
from jaxsal.weights import load_weights, safetensors_io

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
STIM = EXAMPLES / "examples.stim.csv"


@pytest.fixture
def deadline():
    """Fail (instead of hanging the suite) if the test is still running after 20 s: a read of a
    FIFO blocks in the kernel, and SIGALRM interrupts it."""
    def expired(*_):
        raise TimeoutError("still blocked after 20 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def one_line(error) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


def write_stim(folder: pathlib.Path, images, name="s.stim.csv") -> pathlib.Path:
    rows = "".join(f"{os.fspath(image)}\n" for image in images)
    path = folder / name
    path.write_text(f"type=image\npath={folder}\ndata=stimID\n{rows}")
    return path


# ----------------------------------------------------------------------------------------------
# Request: every field checked at the boundary, the field named


REQUEST = dict(net="TinyNet", layer="conv3", channels=[6], stim=STIM, out="out")

BAD_FIELDS = {
    # case: (changes, the field the message names, what else it says)
    "channels None": (dict(channels=None), "channels", "takes channel numbers"),
    "channels text": (dict(channels="six"), "channels", "got 'six'"),
    "channel 1.5": (dict(channels=[1.5]), "channels", "1.5"),
    "stim None": (dict(stim=None), "-stim", "path"),
    "stim 123": (dict(stim=123), "-stim", "path"),
    "out 123": (dict(out=123), "-out", "path"),
    "weights 123": (dict(weights=123), "-weights", "path"),
    "cmap None": (dict(mode="gray", cmap=None), "-cmap", "name (str)"),
    "num_processes '2'": (dict(num_processes="2"), "-num_processes", "whole number"),
    "process_id True": (dict(process_id=True), "-process_id", "whole number"),
    "show 'yes'": (dict(show="yes"), "-show", "True or False"),
    "batch_size '8'": (dict(batch_size="8"), "-batch_size", "whole number"),
    "precision None": (dict(precision=None), "-precision", "highest"),
    "net 1": (dict(net=1), "-net", "name (str)"),
    "vmin nan": (dict(vmin=float("nan")), "-vmin", "bounds must be finite"),
    "vmax inf": (dict(vmax=float("inf")), "-vmax", "bounds must be finite"),
    "vmin -inf, vmax inf": (dict(vmin=-math.inf, vmax=math.inf), "-vmin", "bounds must be finite"),
    "vmin text": (dict(vmin="1"), "-vmin", "number"),
    "address without port": (dict(coordinator_address="nohostport", num_processes=2),
                             "-coordinator_address", "HOST:PORT"),
    "port 0": (dict(coordinator_address="10.0.0.1:0", num_processes=2),
               "-coordinator_address", "1..65535"),
    "port 65536": (dict(coordinator_address="h:65536", num_processes=2),
                   "-coordinator_address", "1..65535"),
    "port not a number": (dict(coordinator_address="h:http", num_processes=2),
                          "-coordinator_address", "1..65535"),
    "IPv6 without brackets": (dict(coordinator_address="::1:1234", num_processes=2),
                              "-coordinator_address", "IPv6 in brackets"),
    "not IPv6 in brackets": (dict(coordinator_address="[host]:1234", num_processes=2),
                             "-coordinator_address", "not an IPv6 address"),
    "address 5": (dict(coordinator_address=5, num_processes=2), "-coordinator_address", "str"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_request_fields_are_checked_at_the_boundary(case):
    changes, field, says = BAD_FIELDS[case]
    with pytest.raises(jaxsal.UsageError) as info:
        Request(**{**REQUEST, **changes})
    text = one_line(info.value)
    assert text.startswith(field) and says in text, text


@pytest.mark.parametrize("address", ["[::1]:1234", "10.0.0.1:1234", "localhost:65535",
                                     "[fe80::1%eth0]:80"])
def test_good_coordinator_addresses_pass(address):
    assert Request(**REQUEST, coordinator_address=address, num_processes=2).cluster.is_multi


def test_every_request_field_has_its_check():
    """A new field gets its type/value check by one entry in `request.FIELD_CHECKS`."""
    assert set(FIELD_CHECKS) == {f.name for f in dataclasses.fields(Request)}


def test_api_arguments_of_the_wrong_type_are_named(tiny_weights, tiny_net):
    cases = [
        (lambda: jaxsal.load_net(123), "name must be a name"),
        (lambda: jaxsal.load_net("TinyNet", weights=123), "weights must be a path"),
        (lambda: jaxsal.saliency("TinyNet", [EXAMPLES / "coffee.jpg"], "conv3", [6]),
         "net must be a jaxsal Net"),
        (lambda: jaxsal.saliency(tiny_net, str(EXAMPLES / "coffee.jpg"), "conv3", [6]),
         "images must be a list of images"),
        (lambda: jaxsal.saliency(tiny_net, [EXAMPLES / "coffee.jpg"], 3, [6]),
         "layer must be a name"),
        (lambda: jaxsal.saliency(tiny_net, [EXAMPLES / "coffee.jpg"], "conv3", None),
         "channels takes channel numbers"),
        (lambda: jaxsal.saliency(tiny_net, [EXAMPLES / "coffee.jpg"], "conv3", [6.5]),
         "channels takes channel numbers"),
        (lambda: jaxsal.saliency(tiny_net, [EXAMPLES / "coffee.jpg"], "conv3", [6],
                                 batch_size="4"), "batch_size must be a whole number"),
        (lambda: jaxsal.plot(np.zeros((1, 1, 3, 32, 32)), [EXAMPLES / "coffee.jpg"], [6],
                             mode="gray", vmax=float("inf")), "vmax must be a finite number"),
    ]
    for call, says in cases:
        with pytest.raises(jaxsal.UsageError) as info:
            call()
        assert says in one_line(info.value), info.value


# ----------------------------------------------------------------------------------------------
# The command: one line, exit 2, nothing written


def command_fails(dnn_saliency, tmp_path, tiny_weights, *extra, stim=STIM) -> str:
    done = dnn_saliency(["-net", "TinyNet", "-layer", "conv3", "-chn", "6", "-stim", stim,
                         "-weights", tiny_weights, "-out", tmp_path / "out", *extra], tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and done.stderr.startswith("dnn_saliency: error: ")
    assert done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "out").exists()
    return done.stderr


@pytest.mark.parametrize("bounds", [("-vmin", "nan"), ("-vmax", "inf"),
                                    ("-vmin", "-inf", "-vmax", "inf")])
def test_command_refuses_non_finite_bounds(bounds, dnn_saliency, tmp_path, tiny_weights):
    err = command_fails(dnn_saliency, tmp_path, tiny_weights, "-mode", "gray", *bounds)
    assert "bounds must be finite" in err and bounds[0] in err


def test_command_refuses_a_malformed_coordinator_address(dnn_saliency, tmp_path, tiny_weights):
    err = command_fails(dnn_saliency, tmp_path, tiny_weights, "-coordinator_address",
                        "nohostport", "-num_processes", "2", "-process_id", "0")
    assert "-coordinator_address must be HOST:PORT" in err


# ----------------------------------------------------------------------------------------------
# Non-finite weights: refused before compute, naming the file and the first bad tensor


def test_non_finite_weights_are_refused_naming_file_and_tensor(tmp_path, tiny_weights,
                                                               dnn_saliency, weights_env):
    params, metadata = safetensors_io.load(tiny_weights)
    params = {k: v.copy() for k, v in params.items()}
    params["conv2.kernel"][0, 1, 2, 3] = np.inf
    params["fc1.kernel"][0, 0] = np.nan  # later in the network: not the one named
    bad = safetensors_io.save(tmp_path / "inf.safetensors", params, metadata)
    err = command_fails(dnn_saliency, tmp_path, bad)
    assert f"{bad}: tensor conv2.kernel (torch features.3.weight) holds +inf at index (0, 1, 2, 3)" \
        in err

    bundled = tmp_path / "alexnet_copy.safetensors"  # a copy of a bundled file, one NaN in it
    shutil.copy(REPO / "weights" / "alexnet_conv.safetensors", bundled)
    params, metadata = safetensors_io.load(bundled)
    params = {k: v.copy() for k, v in params.items()}
    params["conv4.kernel"][0, 0, 0, 0] = np.nan
    safetensors_io.save(bundled, params, metadata)
    with pytest.raises(jaxsal.UsageError, match=r"conv4\.kernel .* holds NaN"):
        load_weights(jaxsal.models.get_net_spec("AlexNet"), bundled)


def test_non_finite_weights_in_a_pth_are_refused(tmp_path, tiny_torch_checkpoint, weights_env):
    torch = pytest.importorskip("torch")
    _, state = tiny_torch_checkpoint
    state = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
    state["features.0.weight"][3, 0, 1, 1] = float("nan")
    path = tmp_path / "tinynet-nan.pth"
    torch.save(state, path)
    with pytest.raises(jaxsal.UsageError) as info:
        load_weights(tiny_net.TINY, path)
    text = one_line(info.value)
    assert text.startswith(f"{path}: tensor conv1.kernel (torch features.0.weight) holds NaN")


# ----------------------------------------------------------------------------------------------
# Stimulus lists and images that are not regular files


def test_stim_fifo_device_and_huge_list_are_refused_at_once(tmp_path, deadline):
    fifo = tmp_path / "x.stim.csv"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.stim.csv"
    zero.symlink_to("/dev/zero")
    huge = tmp_path / "huge.stim.csv"
    with open(huge, "wb") as f:  # sparse: no disk used, nothing read
        f.truncate(stimuli.MAX_STIM_FILE_BYTES + 1)
    for path, says in ((fifo, "is a FIFO (named pipe), not a .stim.csv file"),
                       (zero, "is a character device, not a .stim.csv file"),
                       (huge, "larger than 64 MB")):
        with pytest.raises(jaxsal.UsageError) as info:
            stimuli.read_stim_csv(path)
        assert one_line(info.value) == f"{path}: {says}" + (
            " (a stimulus list must be a regular file)" if path != huge else
            ", the most a stimulus list may be")


def test_images_that_are_fifos_or_devices_are_named(tmp_path, deadline):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    shutil.copy(EXAMPLES / "coffee.jpg", tmp_path / "coffee.jpg")
    stim = write_stim(tmp_path, ["coffee.jpg", "pipe.png", "zero.png"])
    with pytest.raises(jaxsal.UsageError) as info:
        stimuli.read_stim_csv(stim)
    text = str(info.value)
    assert f"line 5: not a regular file (a FIFO (named pipe)): {tmp_path / 'pipe.png'}" in text
    assert f"line 6: not a regular file (a character device): {tmp_path / 'zero.png'}" in text
    with pytest.raises(jaxsal.UsageError, match="not a regular file"):
        stimuli.load_image(tmp_path / "pipe.png")


# ----------------------------------------------------------------------------------------------
# Pixel limit and bounded decoding


def png(path: pathlib.Path, width: int, height: int, shade: int) -> pathlib.Path:
    """A distinct, highly compressible RGB PNG (a gradient)."""
    row = (np.arange(width, dtype=np.uint16) * 7 + shade).astype(np.uint8)
    Image.fromarray(np.broadcast_to(row[None, :, None], (height, width, 3)).copy()).save(path)
    return path


def test_pixel_limit_is_one_line_and_replaces_pillows_warning(tmp_path, monkeypatch,
                                                             dnn_saliency, tiny_weights):
    big = png(tmp_path / "big.png", 300, 200, 0)
    stim = write_stim(tmp_path, ["big.png"])
    monkeypatch.setenv("JAXSAL_MAX_IMAGE_PIXELS", "50000")
    with pytest.raises(jaxsal.UsageError) as info:
        stimuli.read_stim_csv(stim)
    assert one_line(info.value) == (
        f"{stim}: line 4: image {big} is 300x200 pixels (60,000), more than the limit of "
        f"50,000 pixels: reduce it, or raise the limit with JAXSAL_MAX_IMAGE_PIXELS=<pixels>")

    # Pillow's own check would warn (DecompressionBombWarning) past its limit: the command
    # checks its own limit instead, and says nothing else.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = command_fails(dnn_saliency, tmp_path, tiny_weights, stim=stim)
    assert "300x200 pixels (60,000), more than the limit of 50,000 pixels" in err
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]

    monkeypatch.setenv("JAXSAL_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(jaxsal.UsageError, match="JAXSAL_MAX_IMAGE_PIXELS must be a whole number"):
        stimuli.load_image(big)


class CountingBudget(stimuli._PixelBudget):
    """The decoding budget, recording the most pixels held at once."""

    def __init__(self):
        super().__init__()
        self.peak = 0

    def hold(self, pixels, limit):
        outer = super().hold(pixels, limit)

        class Held:
            def __enter__(inner):
                outer.__enter__()
                self.peak = max(self.peak, self._held)

            def __exit__(inner, *exc):
                return outer.__exit__(*exc)

        return Held()


def test_decoding_holds_at_most_the_pixel_limit_at_once(tmp_path, monkeypatch, tiny_weights):
    """Validation (8 threads) and the run's decoder (2-8 threads) decode distinct large images
    one at a time when two would pass the limit; small ones still decode side by side."""
    images = [png(tmp_path / f"i{k}.png", 400, 300, 40 * k) for k in range(4)]
    stim = write_stim(tmp_path, [p.name for p in images])
    budget = CountingBudget()
    monkeypatch.setattr(stimuli, "_DECODING", budget)
    monkeypatch.setenv("JAXSAL_MAX_IMAGE_PIXELS", str(int(400 * 300 * 1.5)))
    stimuli.read_stim_csv(stim)
    assert budget.peak == 400 * 300  # one image at a time: two would pass the limit
    plan = jaxsal.request.validate(Request(net="TinyNet", layer="conv3", channels=[6],
                                           stim=stim, weights=tiny_weights, out=tmp_path / "o"))
    budget.peak = 0
    from jaxsal.pipeline import Decoder

    decoder = Decoder(plan, [0, 1, 2, 3], [(1, range(4))])
    try:
        assert [i for i, _, _ in decoder] == [0, 1, 2, 3]
    finally:
        decoder.close()
    assert budget.peak == 400 * 300

    monkeypatch.setenv("JAXSAL_MAX_IMAGE_PIXELS", str(4 * 400 * 300))
    budget.peak = 0
    stimuli.read_stim_csv(stim)  # JPEG-free: full decodes, all four fit at once
    assert 400 * 300 <= budget.peak <= 4 * 400 * 300


@pytest.mark.slow
def test_validation_memory_stays_near_one_image(tmp_path):
    """Four distinct 3000x3000 PNGs (27 MB each decoded): before the budget, validation decoded
    them side by side (4.4 GB for 12000x12000 ones); now its peak stays near one image's, under
    an address-space limit so that a regression fails instead of swapping."""
    images = [png(tmp_path / f"i{k}.png", 3000, 3000, 50 * k) for k in range(4)]
    stim = write_stim(tmp_path, [p.name for p in images])
    from memory_limit import run_limited

    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(2**20),
           "JAXSAL_MAX_IMAGE_PIXELS": str(10**7)}  # large blocks mmapped: freed ones leave RSS
    code = (f"from jaxsal.stimuli import decoded_image, read_stim_csv\n"
            f"with decoded_image({str(images[0])!r}): pass\n"
            f"one = peak_mb()\n"
            f"reset_peak()\n"
            f"read_stim_csv({str(stim)!r})\n"
            f"print(one)\n")
    done, rss = run_limited(code, setup="import PIL.Image, numpy", headroom_mb=1024,
                            timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    one = float(done.stdout.splitlines()[-2])
    assert one > 20, one  # one decoded image (27 MB), as measured
    assert rss < 2.2 * one, (rss, one)
    print("peak MB: one image", one, "validation of four", rss)


@pytest.mark.slow
def test_nan_in_a_full_alexnet_pth_is_refused_by_the_command(torchvision_alexnet_checkpoint,
                                                              tmp_path, dnn_saliency):
    """The issue's case: NaN in AlexNet's conv1 in a 233 MB .pth (before: exit 0, black maps)."""
    torch = pytest.importorskip("torch")
    _, state = torchvision_alexnet_checkpoint
    state = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
    state["features.0.weight"][10, 2, 3, 4] = float("nan")
    path = tmp_path / "alexnet-nan.pth"
    torch.save(state, path)
    del state
    done = dnn_saliency(["-net", "AlexNet", "-layer", "fc3", "-chn", "1", "-stim", STIM,
                         "-weights", path, "-out", tmp_path / "out"], tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert (f"{path}: tensor conv1.kernel (torch features.0.weight) holds NaN at index "
            f"(3, 4, 2, 10)") in done.stderr  # HWIO: (kh, kw, in, out)
    assert not (tmp_path / "out").exists()
