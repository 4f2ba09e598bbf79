"""Tests for jaxsal.atomic: files are written whole or not at all, and no temporary file stays."""

import os

import pytest

from jaxsal import atomic
from jaxsal.errors import OutputError, UsageError


def test_write_creates_and_overwrites(tmp_path):
    dst = tmp_path / "a.bin"
    assert atomic.write_bytes_atomically(dst, b"first") == dst
    assert atomic.write_bytes_atomically(str(dst), memoryview(b"second")) == dst
    assert dst.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_atomic_path_yields_a_fresh_hidden_path_in_the_same_folder(tmp_path):
    dst = tmp_path / "maps.npz"
    with atomic.atomic_path(dst) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".maps.npz.")
        assert not tmp.exists()
        tmp.write_bytes(b"data")
        assert not dst.exists()  # nothing under the final name before the end
    assert dst.read_bytes() == b"data"
    assert os.listdir(tmp_path) == ["maps.npz"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    dst = tmp_path / "w.safetensors"
    dst.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic.atomic_path(dst) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("half way")
    assert dst.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["w.safetensors"]


def test_a_writer_that_never_created_the_file_fails_cleanly(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic.atomic_path(tmp_path / "x.jpg"):
            pass  # nothing written: there is nothing to move into place
    assert os.listdir(tmp_path) == []


def test_a_failing_rename_leaves_no_temporary(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        assert os.path.getsize(src) == 4  # written and synced before the rename
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    # One line naming the final file (not the temporary one) and the reason: the command prints
    # it as `dnn_saliency: error: ...`, exit status 2.
    with pytest.raises(OutputError) as error:
        atomic.write_bytes_atomically(tmp_path / "f.jpg", b"data")
    assert str(error.value) == f"cannot write {tmp_path / 'f.jpg'}: No space left on device"
    assert isinstance(error.value, UsageError)
    assert os.listdir(tmp_path) == []
