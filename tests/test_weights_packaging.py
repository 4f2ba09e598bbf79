"""The bundled weights ship in regular (non-editable) installs too, and every package is listed."""
from __future__ import annotations

import importlib.resources
import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    """pyproject lists packages explicitly (for jaxsal._bundled), so a new one must be added."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(d.relative_to(ROOT).parts)
        for d in [ROOT / "jaxsal", *(ROOT / "jaxsal").rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
    }
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages"
    assert "jaxsal._bundled" in listed


def test_resources_find_the_bundled_file_in_this_install():
    import jaxsal
    from jaxsal.models import get_net_spec
    from jaxsal.weights import bundled_weights_path

    assert bundled_weights_path(get_net_spec("AlexNet")).is_file()
    try:
        path = importlib.resources.files("jaxsal._bundled") / "alexnet_conv.safetensors"
    except ModuleNotFoundError:
        # `python -m pytest` puts the source tree first on sys.path: the jaxsal._bundled mapping
        # exists only in installs (checked by the wheel test below), and the loader above falls
        # back to the repository's weights/ folder.
        assert pathlib.Path(jaxsal.__file__).resolve().parent == ROOT / "jaxsal"
        return
    assert path.is_file()


@pytest.mark.slow
def test_wheel_carries_the_bundled_file(tmp_path):
    """Build a wheel (as `pip install .` does), install it into a folder, and look it up there
    with site-packages disabled, so neither the editable install nor the source tree can help.
    The build runs on a copy of the sources, leaving no build/ folder in the work tree."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("jaxsal", "weights"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {proc.stderr[-300:]}")
    (wheel,) = (tmp_path / "dist").glob("jaxsal-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    assert "jaxsal/_bundled/alexnet_conv.safetensors" in names
    assert "jaxsal/_bundled/vgg16_conv.safetensors" in names
    assert "jaxsal/weights/__init__.py" in names and "jaxsal/models/alexnet.py" in names
    code = (
        "import importlib.resources, jaxsal;"
        "p = importlib.resources.files('jaxsal._bundled') / 'alexnet_conv.safetensors';"
        "print(p.is_file(), jaxsal.__file__, p)"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(tmp_path / "site")}, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    ok, init, found = proc.stdout.split()
    assert ok == "True" and init.startswith(str(tmp_path / "site")) and found.startswith(str(tmp_path / "site"))
