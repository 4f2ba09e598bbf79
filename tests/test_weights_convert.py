"""torchvision .pth -> jaxsal safetensors: values, layout, provenance, errors, and the CLI.

The tests of the 244 MB random AlexNet checkpoint (`converted`) are `slow`; TinyNet's small
checkpoint (tests/conftest.py) covers the same paths in the fast tier (end of the file)."""
from __future__ import annotations

import collections
import hashlib
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from jaxsal.errors import UsageError
from jaxsal.models import get_net_spec
from jaxsal.weights import convert_checkpoint, load_weights
from jaxsal.weights.command import run

torch = pytest.importorskip("torch")

SPEC = get_net_spec("AlexNet")
CONVS = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6",
         "conv4": "features.8", "conv5": "features.10"}
FCS = {"fc1": "classifier.1", "fc2": "classifier.4", "fc3": "classifier.6"}


@pytest.fixture(scope="module")
def converted(torchvision_alexnet_checkpoint, tmp_path_factory):
    src, state = torchvision_alexnet_checkpoint
    dst = tmp_path_factory.mktemp("converted") / "alexnet.safetensors"
    weights = convert_checkpoint(SPEC, src, dst)
    return src, state, dst, weights


@pytest.mark.slow
def test_conv_and_fc_layouts(converted):
    _, state, _, weights = converted
    p = weights.params
    assert set(p) == {f"{n}.{leaf}" for n in (*CONVS, *FCS) for leaf in ("kernel", "bias")}
    for name, tname in CONVS.items():
        np.testing.assert_array_equal(p[f"{name}.kernel"], state[f"{tname}.weight"].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(p[f"{name}.bias"], state[f"{tname}.bias"])
    for name in ("fc2", "fc3"):
        np.testing.assert_array_equal(p[f"{name}.kernel"], state[f"{FCS[name]}.weight"].T)
    for name, tname in FCS.items():
        np.testing.assert_array_equal(p[f"{name}.bias"], state[f"{tname}.bias"])
    assert all(a.dtype == np.float32 for a in p.values())
    assert weights.missing_stages(SPEC) == ()


@pytest.mark.slow
def test_fc1_rows_follow_hwc_flattening(converted):
    """torch's classifier.1 on a C,H,W-flattened activation == our kernel on the H,W,C flattening."""
    _, state, _, weights = converted
    rng = np.random.default_rng(5)
    act_chw = rng.standard_normal((256, 6, 6)).astype(np.float32)
    linear = torch.nn.Linear(9216, 4096)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(state["classifier.1.weight"]))
        linear.bias.copy_(torch.from_numpy(state["classifier.1.bias"]))
        want = linear(torch.from_numpy(act_chw).reshape(1, -1)).double().numpy()[0]
    act_hwc = act_chw.transpose(1, 2, 0).reshape(-1).astype(np.float64)
    got = act_hwc @ weights.params["fc1.kernel"].astype(np.float64) + weights.params["fc1.bias"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # And the naive (wrong) C,H,W flattening does not match: the test can fail.
    naive = act_chw.reshape(-1).astype(np.float64) @ weights.params["fc1.kernel"].astype(np.float64)
    assert np.abs(naive + weights.params["fc1.bias"] - want).max() > 1e-2


@pytest.mark.slow
def test_conv_kernel_is_hwio(converted):
    """One output value of torch's conv2 equals the HWIO-kernel correlation at that position."""
    _, state, _, weights = converted
    rng = np.random.default_rng(6)
    x_chw = rng.standard_normal((64, 9, 9)).astype(np.float32)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(
            torch.from_numpy(x_chw)[None], torch.from_numpy(state["features.3.weight"]),
            torch.from_numpy(state["features.3.bias"]),
        ).double().numpy()[0]  # (192, 5, 5), no padding
    k = weights.params["conv2.kernel"].astype(np.float64)  # (5, 5, 64, 192) = (kH, kW, in, out)
    x_hwc = x_chw.transpose(1, 2, 0).astype(np.float64)
    for y, x in [(0, 0), (2, 3), (4, 4)]:
        got = np.einsum("hwi,hwio->o", x_hwc[y : y + 5, x : x + 5], k) + weights.params["conv2.bias"]
        np.testing.assert_allclose(got, out[:, y, x], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_safetensors_file_and_provenance(converted):
    src, _, dst, weights = converted
    data = dst.read_bytes()
    assert weights.sha256 == hashlib.sha256(data).hexdigest()
    assert weights.source == str(dst)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__")
    assert list(header) == sorted(header)
    assert all(entry["dtype"] == "F32" for entry in header.values())
    assert list(meta) == sorted(meta)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["source_file"] == src.name
    assert meta["source_sha256"] == sha
    assert meta["net"] == "AlexNet"
    assert meta["format"] == "jaxsal-flat-v1"
    assert meta["layout"] == "conv HWIO; fc (in,out), fc1 rows in H,W,C order"
    assert meta["converter"].startswith("jaxsal ")
    assert weights.provenance == meta
    assert weights.describe() == f"{src.name} (sha256 {sha[:8]}...) via {dst}"
    loaded = load_weights(SPEC, dst)
    assert loaded.sha256 == weights.sha256 and loaded.provenance == meta
    assert loaded.source == str(dst) and loaded.describe() == weights.describe()
    for key in weights.params:
        np.testing.assert_array_equal(loaded.params[key], weights.params[key], err_msg=key)


@pytest.mark.slow
def test_cli_dst_output_is_deterministic(converted, tmp_path, capsys, weights_env):
    """Converting again (through the CLI, --dst) gives the same bytes, and no temp file."""
    src, _, dst, _ = converted
    out = tmp_path / "deep" / "again.safetensors"
    assert run(["--src", str(src), "--dst", str(out)]) == 0
    assert f"JAXSAL_WEIGHTS={out}" in capsys.readouterr().out
    assert out.read_bytes() == dst.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["again.safetensors"]  # no temp file left
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # a normal file, not a 0600 temp file
    assert not weights_env.jaxsal_home.exists()  # --dst given: the cache is not touched


@pytest.mark.slow
def test_legacy_format_gives_identical_params(converted, tmp_path):
    _, state, _, ref = converted
    src = tmp_path / "alexnet-legacy.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, src, _use_new_zipfile_serialization=False)
    weights = convert_checkpoint(SPEC, src, tmp_path / "legacy.safetensors")
    for key, arr in ref.params.items():
        np.testing.assert_array_equal(weights.params[key], arr, err_msg=key)


@pytest.mark.slow
def test_in_memory_conversion_of_explicit_pth(converted, weights_env):
    src, _, _, ref = converted
    weights = load_weights(SPEC, src)
    assert weights.source == str(src)
    assert weights.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert weights.describe().endswith(f"converted in memory from {src}")
    for key in ref.params:
        np.testing.assert_array_equal(weights.params[key], ref.params[key], err_msg=key)
    assert not weights_env.jaxsal_home.exists()  # nothing cached


# --- errors ---------------------------------------------------------------------------------


def tiny_state(**changes):
    state = collections.OrderedDict()
    for tname in (*CONVS.values(), *FCS.values()):
        state[f"{tname}.weight"] = torch.zeros(2, 2, 1, 1) if tname.startswith("f") else torch.zeros(2, 2)
        state[f"{tname}.bias"] = torch.zeros(2)
    for key, value in changes.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    return state


def convert_error(src, tmp_path):
    with pytest.raises(UsageError) as info:
        convert_checkpoint(SPEC, src, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    text = str(info.value)
    assert "\n" not in text
    return text


def test_missing_key(tmp_path):
    from conftest import TORCHVISION_ALEXNET_SHAPES

    conv_only = {k: torch.zeros(s) for k, s in TORCHVISION_ALEXNET_SHAPES.items() if k.startswith("features")}
    torch.save(conv_only, tmp_path / "features.pth")
    text = convert_error(tmp_path / "features.pth", tmp_path)
    assert "missing keys" in text and "classifier.1.weight" in text and "features.pth" in text


def test_wrong_shapes(tmp_path):
    torch.save(tiny_state(), tmp_path / "tiny.pth")
    text = convert_error(tmp_path / "tiny.pth", tmp_path)
    assert "shape" in text and "tiny.pth" in text


def test_unexpected_key_and_integer_tensor(tmp_path):
    torch.save(tiny_state(**{"features.99.weight": torch.zeros(1)}), tmp_path / "extra.pth")
    assert "features.99.weight" in convert_error(tmp_path / "extra.pth", tmp_path)
    torch.save(tiny_state(**{"features.0.bias": torch.zeros(2, dtype=torch.long)}), tmp_path / "int.pth")
    assert "not floating point" in convert_error(tmp_path / "int.pth", tmp_path)


def test_name_hash_mismatch(tiny_torch_checkpoint, tmp_path):
    src, _ = tiny_torch_checkpoint  # the name is checked before the contents
    liar = tmp_path / "alexnet-owt-7be5be79.pth"
    liar.symlink_to(src)
    text = convert_error(liar, tmp_path)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert "7be5be79" in text and sha in text and "mismatch" in text


def test_missing_source_and_bad_destination(tiny_torch_checkpoint, tmp_path):
    assert "does not exist" in convert_error(tmp_path / "nope.pth", tmp_path)
    src, _ = tiny_torch_checkpoint  # the destination is checked before the contents
    with pytest.raises(UsageError, match=r"\.safetensors"):
        convert_checkpoint(SPEC, src, tmp_path / "out.npz")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot write"):
        convert_checkpoint(SPEC, src, blocker / "sub" / "out.safetensors")


# --- the jaxsal-convert command ---------------------------------------------------------------


@pytest.mark.slow
def test_cli_convert_into_cache_then_found(converted, weights_env, capsys):
    """`jaxsal-convert --src FILE` (no --dst) stores where load_weights looks by default."""
    src, _, dst, _ = converted
    assert run(["--src", str(src)]) == 0
    out = capsys.readouterr().out
    cached = weights_env.jaxsal_home / "alexnet.safetensors"
    assert str(cached) in out and "automatically" in out
    assert cached.read_bytes() == dst.read_bytes()
    weights = load_weights(SPEC)
    assert weights.source == str(cached) and weights.missing_stages(SPEC) == ()


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["--src", "/no/such/alexnet.pth"], "does not exist"),
        (["--src", "X.pth", "--dst", "out.bin"], ".safetensors"),
        (["--src", "X.pth", "--net", "NoNet"], "unknown network"),
    ],
)
def test_cli_user_errors_exit_2(argv, expect, capsys, weights_env):
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxsal-convert: error: ") and expect in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("argv", [[], ["--src", "a", "--download"], ["--src", "a", "--url", "http://x"]])
def test_cli_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        run(argv)
    assert info.value.code == 2


def test_console_script_help():
    exe = [sys.executable, "-c", "import sys; from jaxsal.weights.command import run; sys.exit(run())"]
    proc = subprocess.run([*exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--download" in proc.stdout and "--src" in proc.stdout


def test_checkpoint_of_another_registered_net_is_named_as_such():
    """An AlexNet state_dict given for TinyNet (tests/tiny_net.py, registered): the message names
    the network the keys belong to and the flag to use."""
    import tiny_net
    from conftest import TORCHVISION_ALEXNET_SHAPES

    from jaxsal.weights.conversion import convert_state_dict, identify

    state = {k: np.zeros(s, np.float32) for k, s in TORCHVISION_ALEXNET_SHAPES.items()}
    assert identify(state) == "AlexNet"
    with pytest.raises(UsageError, match=r"^alexnet-x\.pth holds AlexNet weights, not TinyNet: use "
                                         r"-net AlexNet, or a TinyNet checkpoint \(tinynet-00000000\.pth\)$"):
        convert_state_dict(tiny_net.TINY, state, source_file="alexnet-x.pth", source_sha256="0" * 64)
    tiny_state = {p.torch_key: np.zeros(1, np.float32) for p in tiny_net.TINY.params}
    assert identify(tiny_state) == "TinyNet"
    with pytest.raises(UsageError, match=r"^t\.pth holds TinyNet weights, not AlexNet: use -net TinyNet"):
        convert_state_dict(SPEC, tiny_state, source_file="t.pth", source_sha256="0" * 64)
    del tiny_state["classifier.3.bias"]  # nobody's keys: the missing and unexpected ones are named
    with pytest.raises(UsageError, match="is not a torchvision AlexNet checkpoint: missing keys"):
        convert_state_dict(SPEC, tiny_state, source_file="t.pth", source_sha256="0" * 64)


# --- the same on TinyNet's small checkpoint (fast; the AlexNet ones above are `slow`) --------


def test_tiny_checkpoint_layouts_and_provenance(tiny_torch_checkpoint, tmp_path, weights_env):
    """Conv kernels become HWIO, linear kernels (in, out), and the first linear layer's rows follow
    jaxsal's H,W,C flattening: torch's layer on the C,H,W-flattened activation equals ours."""
    import tiny_net

    src, state = tiny_torch_checkpoint
    spec = tiny_net.TINY
    dst = tmp_path / "tiny.safetensors"
    weights = convert_checkpoint(spec, src, dst)
    p = weights.params
    assert set(p) == {q.key for q in spec.params} and all(a.dtype == np.float32 for a in p.values())
    for name, tname in (("conv1", "features.0"), ("conv2", "features.3"), ("conv3", "features.5")):
        np.testing.assert_array_equal(p[f"{name}.kernel"], state[f"{tname}.weight"].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(p[f"{name}.bias"], state[f"{tname}.bias"])
    np.testing.assert_array_equal(p["fc2.kernel"], state["classifier.3.weight"].T)
    act_chw = np.random.default_rng(5).standard_normal((16, 3, 3)).astype(np.float32)
    linear = torch.nn.Linear(144, 32)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(state["classifier.1.weight"]))
        linear.bias.copy_(torch.from_numpy(state["classifier.1.bias"]))
        want = linear(torch.from_numpy(act_chw).reshape(1, -1)).double().numpy()[0]
    got = act_chw.transpose(1, 2, 0).reshape(-1).astype(np.float64) @ p["fc1.kernel"] + p["fc1.bias"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    naive = act_chw.reshape(-1).astype(np.float64) @ p["fc1.kernel"] + p["fc1.bias"]
    assert np.abs(naive - want).max() > 1e-2  # the C,H,W flattening would not match
    meta = weights.provenance
    assert meta["net"] == "TinyNet" and meta["source_file"] == src.name
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert weights.missing_stages(spec) == ()
    loaded = load_weights(spec, dst)
    assert loaded.sha256 == weights.sha256 and loaded.provenance == meta
    in_memory = load_weights(spec, src)  # an explicit .pth: converted in memory, nothing cached
    assert in_memory.describe().endswith(f"converted in memory from {src}")
    for key in p:
        np.testing.assert_array_equal(loaded.params[key], p[key], err_msg=key)
        np.testing.assert_array_equal(in_memory.params[key], p[key], err_msg=key)
    assert not weights_env.jaxsal_home.exists()
    with pytest.raises(UsageError, match="holds TinyNet weights, not AlexNet"):
        convert_checkpoint(SPEC, src, tmp_path / "wrong.safetensors")


def test_tiny_cli_convert_into_cache_then_found_and_deterministic(tiny_torch_checkpoint, tmp_path,
                                                                   capsys, weights_env):
    """`jaxsal-convert --net TinyNet --src FILE` stores where load_weights looks; converting again
    with --dst gives the same bytes, a normal file, and no temp file."""
    import tiny_net

    src, _ = tiny_torch_checkpoint
    assert run(["--net", "TinyNet", "--src", str(src)]) == 0
    out = capsys.readouterr().out
    cached = weights_env.jaxsal_home / "tinynet.safetensors"
    assert str(cached) in out and "automatically" in out
    weights = load_weights(tiny_net.TINY)
    assert weights.source == str(cached) and weights.missing_stages(tiny_net.TINY) == ()
    again = tmp_path / "deep" / "again.safetensors"
    assert run(["--net", "TinyNet", "--src", str(src), "--dst", str(again)]) == 0
    assert f"JAXSAL_WEIGHTS={again}" in capsys.readouterr().out
    assert again.read_bytes() == cached.read_bytes()
    assert [p.name for p in again.parent.iterdir()] == ["again.safetensors"]  # no temp file left
    umask = os.umask(0o022)
    os.umask(umask)
    assert again.stat().st_mode & 0o777 == 0o666 & ~umask  # a normal file, not a 0600 temp file


def _old_tiny_key(key: str) -> str:  # module level: a NetSpec's fields stay hashable
    return key.replace("features.", "old_features.")


def _rename_old_tiny_key(key: str) -> str:
    return key.replace("old_features.", "features.")


def test_a_descriptions_key_rename_hook_reads_checkpoints_with_old_module_names(
        tiny_torch_checkpoint):
    """`WeightSource.rename_torch_key` maps a published checkpoint's old key names to the
    description's (as torchvision's DenseNet loader does with a regex): the converter applies
    it, with no network's knowledge in jaxsal.weights; two keys that rename to one are refused."""
    import dataclasses

    import tiny_net

    from jaxsal.weights.conversion import convert_state_dict

    _, state = tiny_torch_checkpoint
    old = {_old_tiny_key(k): v for k, v in state.items()}
    with pytest.raises(UsageError, match="missing keys"):
        convert_state_dict(tiny_net.TINY, old, source_file="t.pth", source_sha256="0" * 64)
    spec = dataclasses.replace(tiny_net.TINY, weights=dataclasses.replace(
        tiny_net.TINY.weights, rename_torch_key=_rename_old_tiny_key))
    params, _ = convert_state_dict(spec, old, source_file="t.pth", source_sha256="0" * 64)
    expected, _ = convert_state_dict(tiny_net.TINY, state, source_file="t.pth",
                                     source_sha256="0" * 64)
    assert params.keys() == expected.keys()
    assert all(np.array_equal(params[k], expected[k]) for k in params)
    both = {**old, "features.0.weight": state["features.0.weight"]}
    with pytest.raises(UsageError, match="two checkpoint keys are both 'features.0.weight'"):
        convert_state_dict(spec, both, source_file="t.pth", source_sha256="0" * 64)
