"""Many channels and the zarr map store (`-save_maps -maps_format zarr`, `jaxsal.map_store`) on
TinyNet: every channel of a layer in blocks, the store's layout (xarray's conventions), its
contents against the Python API, the float16 and gray reductions, a reader of one unit x 100
stimuli reading only those maps, an existing store never overwritten, and (slow) a full disk as
one line (npz and store). Killing a real run and resuming it: test_map_store_resume.py (slow)."""
from __future__ import annotations

import errno
import io
import json
import os
import pathlib
import types

import numpy as np
import pytest
from PIL import Image

import jaxsal
import tiny_net
from jaxsal import map_store
from jaxsal.errors import OutputError, UsageError
from jaxsal.methods import resolve
from jaxsal.reporting import Reporter
from jaxsal.request import Plan, Request, validate

REPO = pathlib.Path(__file__).resolve().parents[1]
STIM = REPO / "examples" / "examples.stim.csv"  # 7 photographs: figures of 6 and 1
AXES = ("channel", "stimulus", "rgb", "y", "x")


def request(weights, out, **changes) -> Request:
    fields = dict(net="TinyNet", layer="conv3", channels="all", stim=STIM, weights=weights,
                  out=out, save_maps=True, maps_format="zarr")
    fields.update(changes)
    return Request(**fields)


def quiet() -> tuple[Reporter, io.StringIO]:
    err = io.StringIO()
    return Reporter("jaxsal", stdout=io.StringIO(), stderr=err), err


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_weights):
    """A run of every channel of TinyNet conv3 over the 7 examples: (folder, its report, its
    stderr)."""
    import zarr

    mp = pytest.MonkeyPatch()
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "JAXSAL_WEIGHTS"):
        mp.delenv(var, raising=False)
    mp.setenv("MPLBACKEND", "Agg")
    folder = tmp_path_factory.mktemp("stores")
    reporter, err = quiet()
    plain = jaxsal.run(request(tiny_weights, folder / "plain"), reporter=reporter)
    mp.undo()
    assert zarr.open_group(plain.maps, mode="r").attrs["complete"] is True
    return folder, plain, err.getvalue()


def test_every_channel_in_blocks_equals_the_api_and_figures_show_five(stores, tiny_net):
    import zarr

    folder, report, err = stores
    assert report.maps == folder / "plain" / "TinyNet_conv3_maps.zarr"
    assert sorted(p.name for p in (folder / "plain").iterdir()) == [
        "TinyNet_conv3_fig1.jpg", "TinyNet_conv3_fig2.jpg", "TinyNet_conv3_maps.zarr"]
    lines = [line for line in err.splitlines() if "stimuli" not in line]  # progress aside
    assert lines == [
        "jaxsal: figures show the first 5 of the 16 channels; the maps of all 16 are saved to "
        f"{report.maps}", f"jaxsal: maps saved to {report.maps}"]
    with Image.open(folder / "plain" / "TinyNet_conv3_fig1.jpg") as im:
        assert im.size == (1000, 600)
    store = zarr.open_group(report.maps, mode="r")
    images = [str(REPO / "examples" / s) for s in store["stimulus"][:]]
    api = jaxsal.saliency(tiny_net, images, "conv3", "all")  # channel blocks too (16 > 8)
    maps = store["maps"][:]
    assert maps.dtype == np.float32 and maps.shape == (16, 7, 3, 32, 32)
    np.testing.assert_array_equal(maps, api)
    assert np.abs(maps).max() > 0


def test_the_store_follows_xarrays_conventions(stores):
    import zarr

    _, report, _ = stores
    store = zarr.open_group(report.maps, mode="r")
    assert set(store.array_keys()) == {"maps", "activations", "channel", "stimulus",
                                       "shards_done"}
    dims = {name: store[name].metadata.dimension_names for name in store.array_keys()}
    assert dims == {"maps": AXES, "activations": ("channel", "stimulus"), "channel": ("channel",),
                    "stimulus": ("stimulus",), "shards_done": ("shard",)}
    assert store["channel"][:].tolist() == list(range(1, 17))
    stim_lines = STIM.read_text().splitlines()
    ids = [line.split(",")[0] for line in stim_lines[stim_lines.index("data=stimID,label") + 1:]
           if line]
    assert [str(s) for s in store["stimulus"][:]] == ids
    assert store["shards_done"][:].tolist() == [1]
    attrs = dict(store.attrs)
    assert attrs["complete"] is True and attrs["net"] == "TinyNet" and attrs["layer"] == "conv3"
    assert attrs["method_options"] == {"name": "guided"}
    assert attrs["maps_axes"] == "channel, stimulus, rgb, y, x"
    assert attrs["weights"] == report.weights and len(attrs["weights"]["sha256"]) == 64
    assert attrs["maps_dtype"] == "float32" and attrs["maps_reduce"] == []
    assert attrs["stimuli_per_shard"] == 7
    # One shard file per channel and stimulus shard, one inner chunk per map.
    maps = store["maps"]
    assert maps.shards == (1, 7, 3, 32, 32) and maps.chunks == (1, 1, 3, 32, 32)
    assert np.isnan(maps.fill_value)
    assert not [p for p in report.maps.rglob("*") if p.name.startswith(".")
                or p.name.endswith(".partial")]


def test_activations_are_the_targets_values(stores, tiny_net):
    import jax.numpy as jnp
    import zarr

    from jaxsal.core import target_forward
    from jaxsal.stimuli import load_image, preprocess

    _, report, _ = stores
    store = zarr.open_group(report.maps, mode="r")
    x = np.stack([preprocess(load_image(REPO / "examples" / str(s)), tiny_net.spec.preprocessing)
                  for s in store["stimulus"][:]])
    expected = np.asarray(target_forward(tiny_net.spec, "conv3", "highest", tiny_net.params,
                                         jnp.asarray(x), jnp.arange(16)))
    activations = store["activations"][:]
    assert activations.shape == (16, 7) and activations.dtype == np.float32
    np.testing.assert_allclose(activations, expected, rtol=1e-5,
                               atol=1e-6 * np.abs(expected).max())


def test_float16_keeps_three_digits_of_each_gray_map(stores, tmp_path):
    """-maps_reduce float16,gray on the run's own maps (MapStore.write_maps reduces them)."""
    import zarr

    _, plain, _ = stores
    full = zarr.open_group(plain.maps, mode="r")["maps"][:]
    path, _ = _synthetic_store(tmp_path, full, ("float16", "gray"))
    store = zarr.open_group(path, mode="r")
    assert dict(store.attrs)["maps_axes"] == "channel, stimulus, y, x"
    assert dict(store.attrs)["maps_dtype"] == "float16"
    assert store["maps"].metadata.dimension_names == ("channel", "stimulus", "y", "x")
    assert store["maps_scale"].metadata.dimension_names == ("channel", "stimulus")
    maps, scale = store["maps"][:], store["maps_scale"][:]
    assert maps.dtype == np.float16 and maps.shape == (16, 7, 32, 32) and scale.shape == (16, 7)
    gray = np.abs(full).max(axis=2)  # the gray reduction: max |RGB| per pixel
    peak = gray.max(axis=(2, 3))
    np.testing.assert_array_equal(np.log2(scale), np.ceil(np.log2(peak)))  # powers of two
    values = maps.astype(np.float32) * scale[:, :, None, None]
    error = np.abs(values - gray) / peak[:, :, None, None]
    assert error.max() <= 2.0 ** -11  # float16's rounding, relative to each map's largest value


def _synthetic_store(folder: pathlib.Path, maps: np.ndarray, reduce=()):
    """A store of the given float32 maps (K, N, 3, 32, 32), written through MapStore in shards
    of 60 stimuli (no network); (its path, the maps)."""
    spec = tiny_net.TINY
    k, n = maps.shape[:2]
    ids = tuple(f"s{i:04d}.png" for i in range(n))
    stimuli = types.SimpleNamespace(ids=ids, paths=ids, stim_file=pathlib.Path("x.stim.csv"))
    asked = Request(net=spec.name, layer="conv3", channels=range(1, k + 1), stim="x.stim.csv",
                    out=folder, save_maps=True, maps_format="zarr", maps_reduce=tuple(reduce))
    plan = Plan(request=asked, spec=spec, channels0=tuple(range(k)),
                method=resolve("guided", spec, "conv3"), stimuli=stimuli, weights=None,
                out=folder, stimuli_per_shard=60)
    store = map_store.MapStore.create(plan, {"stimuli_per_call": 60, "channels_per_call": 4})
    for shard, start in enumerate(range(0, n, 60)):
        stimuli_ = range(start, min(start + 60, n))
        scale = store.write_maps(stimuli_, 0, maps[:, stimuli_.start:stimuli_.stop])
        store.finish_shard(shard, stimuli_, np.zeros((k, len(stimuli_)), np.float32), scale)
    assert store.complete()
    return plan.maps_path, maps


def test_a_reader_of_one_unit_and_100_stimuli_reads_only_those(tmp_path):
    import zarr
    from zarr.storage import LocalStore

    maps = np.random.default_rng(0).standard_normal((4, 240, 3, 32, 32)).astype(np.float32)
    path, maps = _synthetic_store(tmp_path, maps)

    class Counting(LocalStore):
        """Counts the bytes the store hands out for the maps' shard files."""

        read = 0

        async def get(self, key, prototype, byte_range=None):
            buffer = await super().get(key, prototype, byte_range)
            if buffer is not None and key.startswith("maps/c/"):
                Counting.read += len(buffer)
            return buffer

    reader = zarr.open_group(Counting(path, read_only=True), mode="r")
    unit = reader["maps"][2, :100]  # the README's example: channel 3, stimuli 1..100
    np.testing.assert_array_equal(unit, maps[2, :100])
    on_disk = sum(p.stat().st_size for p in (path / "maps").rglob("*") if p.is_file())
    per_map = on_disk / (4 * 240)  # random values: about 3 % compressed
    # The 100 maps and the indexes of the 2 shards they lie in -- not the 860 other maps.
    assert 0.9 * 100 * per_map <= Counting.read < 1.1 * 100 * per_map + 2 * (60 * 16 + 4)


def test_an_existing_store_is_never_overwritten_and_resume_checks_the_request(
        stores, tiny_weights, tmp_path):
    folder, report, _ = stores
    out = folder / "plain"
    before = {p: p.read_bytes() for p in report.maps.rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match=r"exists \(complete\): add -resume to continue it"):
        validate(request(tiny_weights, out))
    assert validate(request(tiny_weights, out, resume=True)).store.complete
    reversed_stim = tmp_path / "reversed.stim.csv"
    ids = ["summer_palace.jpg", "cameraman.jpg", "grace_hopper.jpg", "astronaut.jpg",
           "rocket.jpg", "coffee.jpg", "chelsea_cat.jpg"]
    reversed_stim.write_text(f"type=image\npath={REPO / 'examples'}\ndata=stimID\n"
                             + "".join(i + "\n" for i in ids))
    changed = {
        "channels": (dict(channels="1-4"), "channels 1-16 in the store, 1-4 now"),
        "layer": (dict(layer="conv2", channels="all"), None),  # another store: nothing to resume
        "method": (dict(method="vanilla"), 'method_options {"name": "guided"} in the store, '
                                           '{"name": "vanilla"} now'),
        "reduction": (dict(maps_reduce="float16"), "maps_reduce [] in the store"),
        "stimuli": (dict(stim=reversed_stim), "the stimulus list differs at stimulus 1: "
                                              "'chelsea_cat.jpg' in the store, "
                                              "'summer_palace.jpg' now"),
    }
    for name, (changes, message) in changed.items():
        if message is None:
            assert validate(request(tiny_weights, out, resume=True, **changes)).store is None
            continue
        with pytest.raises(UsageError, match="holds another request") as error:
            validate(request(tiny_weights, out, resume=True, **changes))
        assert message in str(error.value), name
    other_weights = tiny_net.write_weights(tmp_path / "other.safetensors", seed=3)
    with pytest.raises(UsageError, match="weights sha256"):
        validate(request(other_weights, out, resume=True))
    after = {p: p.read_bytes() for p in report.maps.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.slow
def test_a_full_disk_while_saving_the_npz_is_one_line_and_leaves_nothing(
        tmp_path, tiny_weights, dnn_saliency, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    out = tmp_path / "out"
    done = dnn_saliency(["-net", "TinyNet", "-weights", tiny_weights, "-layer", "conv3", "-chn",
                         "all", "-stim", STIM, "-out", out, "-save_maps"], tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"dnn_saliency: error: cannot write {out / 'TinyNet_conv3_maps.npz'}: No space left on "
        f"device")
    assert "Traceback" not in done.stderr
    assert not [p for p in out.iterdir() if not p.name.endswith(".jpg")]


@pytest.mark.slow
def test_a_full_disk_while_writing_the_store_keeps_it_resumable(tmp_path, tiny_weights,
                                                                dnn_saliency, monkeypatch):
    from zarr.storage import _local

    real_put = _local._put

    def full_for_maps(path, value, exclusive=False):
        if "/maps/c/" in os.fspath(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_put(path, value, exclusive)

    monkeypatch.setattr(_local, "_put", full_for_maps)
    out = tmp_path / "out"
    args = ["-net", "TinyNet", "-weights", tiny_weights, "-layer", "conv2", "-chn", "2", "5",
            "-stim", STIM, "-out", out, "-save_maps", "-maps_format", "zarr"]
    done = dnn_saliency(args, tmp_path)
    assert done.returncode == 2, done.stderr
    path = out / "TinyNet_conv2_maps.zarr"
    assert done.stderr.splitlines() == [
        f"dnn_saliency: error: cannot write {path}: No space left on device; the store is kept, "
        f"incomplete: free some space, then run the same command with -resume"]
    assert json.loads((path / "zarr.json").read_text())["attributes"]["complete"] is False
    monkeypatch.setattr(_local, "_put", real_put)
    done = dnn_saliency(args + ["-resume"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((path / "zarr.json").read_text())["attributes"]["complete"] is True
