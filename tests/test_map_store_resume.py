"""Killing a real run of the command and resuming it (`-save_maps -maps_format zarr -resume`):
the resumed store equals an uninterrupted run's, bit for bit; a resume of another request is
refused in one line and leaves the store untouched; a file-size limit while saving the npz is
one line and leaves nothing. Real subprocesses of the command on TinyNet (`python
tests/tiny_net.py ARGS`), 130 small stimuli = 3 shards of the store, 22 figures."""
from __future__ import annotations

import hashlib
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

TINY_SCRIPT = pathlib.Path(__file__).with_name("tiny_net.py")
N_STIMULI = 130


def noise_stimuli(folder: pathlib.Path, n: int) -> pathlib.Path:
    """n small noise PNGs (seeded) and their .stim.csv."""
    rng = np.random.default_rng(0)
    images = folder / "images"
    images.mkdir()
    names = []
    for i in range(n):
        names.append(f"noise{i:03d}.png")
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(images / names[-1])
    stim = folder / "noise.stim.csv"
    stim.write_text(f"type=image\npath={images}\ndata=stimID\n" + "".join(f"{s}\n" for s in names))
    return stim


@pytest.fixture(scope="module")
def case(tmp_path_factory, tiny_weights):
    folder = tmp_path_factory.mktemp("resume")
    home = folder / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAXSAL_WEIGHTS", "DNNBRAIN_DATA", "DISPLAY", "WAYLAND_DISPLAY")}
    env.update(HOME=str(home), JAXSAL_HOME=str(home / "jaxsal"), MPLBACKEND="Agg",
               JAX_PLATFORMS="cpu")
    args = ["-net", "TinyNet", "-weights", str(tiny_weights), "-layer", "conv3", "-chn", "all",
            "-stim", str(noise_stimuli(folder, N_STIMULI)), "-save_maps", "-maps_format", "zarr"]
    return folder, env, args


def command(case, *extra, **popen):
    folder, env, args = case
    return subprocess.Popen([sys.executable, str(TINY_SCRIPT), *args, *map(str, extra)],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def timed_run(case, out: pathlib.Path):
    """An uninterrupted run: (seconds from the store's creation to the end, its output)."""
    proc = command(case, "-out", out)
    store = out / "TinyNet_conv3_maps.zarr" / "zarr.json"
    while not store.exists() and proc.poll() is None:
        time.sleep(0.01)
    created = time.perf_counter()
    out_text, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return time.perf_counter() - created


def files(folder: pathlib.Path) -> dict:
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_killed_at_a_random_point_resumes_to_the_uninterrupted_store(case):
    import zarr

    folder = case[0]
    span = timed_run(case, folder / "reference")
    seed = random.randrange(2**32)
    delay = random.Random(seed).uniform(0, span)
    proc = command(case, "-out", folder / "killed", start_new_session=True)
    store = folder / "killed" / "TinyNet_conv3_maps.zarr"
    while not (store / "zarr.json").exists() and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its figure workers, at once
    proc.communicate()
    where = f"killed {delay:.2f} s of {span:.2f} s after the store was made (seed {seed})"
    assert not [p for p in (folder / "killed").rglob(".*")], where  # nothing hidden left
    if (store / "zarr.json").exists() and proc.returncode == -signal.SIGKILL:
        state = zarr.open_group(store, mode="r")
        if state["shards_done"][:].sum() < 3:
            assert state.attrs["complete"] is False, where

    resumed = command(case, "-out", folder / "killed", "-resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, f"{where}\n{err}"
    a = zarr.open_group(folder / "reference" / "TinyNet_conv3_maps.zarr", mode="r")
    b = zarr.open_group(store, mode="r")
    assert dict(b.attrs) == dict(a.attrs) and b.attrs["complete"] is True, where
    for name in ("maps", "activations", "channel", "stimulus", "shards_done"):
        np.testing.assert_array_equal(b[name][:], a[name][:], err_msg=f"{name}; {where}")
    assert a["shards_done"][:].tolist() == [1, 1, 1]
    figures = sorted(p.name for p in (folder / "reference").glob("*.jpg"))
    assert len(figures) == 22
    for name in figures:  # drawn before the kill or after the resume, the same bytes
        assert (folder / "killed" / name).read_bytes() == (folder / "reference" / name).read_bytes()
    assert not list(store.rglob("*.partial")), where


def test_a_resume_of_another_request_is_refused_and_touches_nothing(case):
    folder = case[0]
    out = folder / "reference"
    if not (out / "TinyNet_conv3_maps.zarr").exists():
        timed_run(case, out)
    before = files(out)
    proc = command(case, "-out", out, "-resume", "-meth", "vanilla")
    stdout, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and stdout == ""
    assert err.splitlines() == [
        f"dnn_saliency: error: -resume: the map store {out / 'TinyNet_conv3_maps.zarr'} holds "
        f"another request (method_options {{\"name\": \"guided\"}} in the store, "
        f"{{\"name\": \"vanilla\"}} now); remove it, or choose another -out, to start this one"]
    assert files(out) == before


def test_a_file_size_limit_while_saving_the_npz_is_one_line_and_leaves_nothing(case):
    """The kernel's own error (EFBIG under RLIMIT_FSIZE; a full disk is ENOSPC on the same path,
    test_map_store.py): 130 stimuli x 16 maps of 12 KiB = 25 MiB against a 4 MiB limit."""
    folder, env, args = case
    out = folder / "limited"
    # The limit is set by a fresh interpreter that then becomes the command (no fork of this
    # multithreaded process); SIGXFSZ ignored, so that write() fails with EFBIG instead.
    limit = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20)); "
             "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
    args = [a for a in args if a not in ("-maps_format", "zarr")]
    done = subprocess.run([sys.executable, "-c", limit, str(TINY_SCRIPT), *args, "-out", str(out)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"dnn_saliency: error: cannot write {out / 'TinyNet_conv3_maps.npz'}: File too large")
    assert "Traceback" not in done.stderr
    assert not [p for p in out.iterdir() if not p.name.endswith(".jpg")]
