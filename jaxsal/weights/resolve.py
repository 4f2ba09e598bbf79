"""Where the weights come from: `load_weights` and its search order.

1. the explicit `path` argument (a jaxsal .safetensors file, or a torch .pth converted in memory);
2. `$JAXSAL_WEIGHTS` (same kinds of file);
3. full weights in jaxsal's cache: `cache_dir()/<net>.safetensors` (what `jaxsal-convert
   --download` and `jaxsal-convert --src FILE` write);
4. a torchvision checkpoint in torch's hub cache (`$TORCH_HOME/hub/checkpoints/`, default
   `~/.cache/torch/hub/checkpoints/`), any published file name; it is converted once into (3);
5. `$DNNBRAIN_DATA/models/<original's file name>`, the original program's location (SPEC §9,
   §13 row 18), converted in memory; a warning is given when its sha256 matches no published file;
6. the bundled conv-only weights, for the networks that have them (targets above the
   convolutions then need one of the above).

A path given explicitly (1, 2) must exist: it is an error, never a silent fallback.
"""
from __future__ import annotations

import os
import pathlib
import warnings

from jaxsal.errors import UsageError
from jaxsal.models import NetSpec
from jaxsal.weights import conversion, params
from jaxsal.weights.hashing import name_hash_prefix
from jaxsal.weights.params import Weights

WEIGHTS_ENV = "JAXSAL_WEIGHTS"
HOME_ENV = "JAXSAL_HOME"
BUNDLED_PACKAGE = "jaxsal._bundled"


class WeightsWarning(UserWarning):
    """Weights were found but look unusual (e.g. an unrecognised sha256)."""


def _env_path(name: str) -> pathlib.Path | None:
    value = os.environ.get(name, "")
    return pathlib.Path(value).expanduser() if value.strip() else None


def _cache_path() -> pathlib.Path:
    return _env_path(HOME_ENV) or pathlib.Path.home() / ".cache" / "jaxsal"


def cache_dir() -> pathlib.Path:
    """jaxsal's cache folder, `$JAXSAL_HOME` or `~/.cache/jaxsal`, created if missing."""
    path = _cache_path()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(
            f"cannot create the jaxsal cache folder {path}: {e.strerror or e}; set {HOME_ENV} to a writable folder"
        ) from None
    return path


def cached_weights_path(spec: NetSpec) -> pathlib.Path:
    """Where full converted weights live so that `load_weights` finds them without options."""
    return _cache_path() / f"{spec.name.lower()}.safetensors"


def torch_hub_checkpoint_dir() -> pathlib.Path:
    """torch.hub's download folder, computed as torch does (without importing torch)."""
    torch_home = _env_path("TORCH_HOME")
    if torch_home is None:
        xdg = _env_path("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
        torch_home = xdg / "torch"
    return torch_home / "hub" / "checkpoints"


def dnnbrain_checkpoint_path(spec: NetSpec) -> pathlib.Path | None:
    """`$DNNBRAIN_DATA/models/<file>`, the file DNNBrain loads (e.g. alexnet.pth,
    inception_v3_google.pth), or None if the variable is unset."""
    data = _env_path("DNNBRAIN_DATA")
    return data / "models" / spec.weights.original if data else None


def bundled_weights_path(spec: NetSpec) -> pathlib.Path | None:
    """The bundled conv-only file (package data of `jaxsal._bundled`), or None if the net has none.

    Found through importlib.resources in both editable and regular installs; a plain source
    checkout (no install) falls back to the repository's top-level weights/ folder.
    """
    name = spec.weights.bundled
    if not name:
        return None
    candidates = []
    try:
        import importlib.resources

        candidates.append(pathlib.Path(str(importlib.resources.files(BUNDLED_PACKAGE) / name)))
    except (ImportError, TypeError):
        pass
    candidates.append(pathlib.Path(__file__).resolve().parents[2] / "weights" / name)
    for path in candidates:
        if path.is_file():
            return path
    raise UsageError(
        f"the bundled weights file {name} is missing from this jaxsal installation; reinstall "
        f"jaxsal, or get full weights with `jaxsal-convert --download`"
    )


def missing_weights_message(spec: NetSpec, layer: str, missing: tuple[str, ...], weights=None) -> str:
    """The one-line error for a target whose stages' weights were not found (SPEC §13 row 18)."""
    held = f" ({weights.describe()})" if weights is not None else ""
    first = spec.weights.files[0]
    prefix = name_hash_prefix(first)
    where = f"{spec.weights.url}, sha256 prefix {prefix}" if prefix else spec.weights.url
    return (
        f"layer {layer!r} of {spec.name} needs the weights of {', '.join(missing)}, which the "
        f"weights found{held} do not hold. Fetch and convert the full checkpoint once with "
        f"`jaxsal-convert --download --net {spec.name}` ({where}), or convert a copy you already "
        f"have with `jaxsal-convert --net {spec.name} --src {first}`; either stores "
        f"{cached_weights_path(spec)}, which is then used automatically (or point {WEIGHTS_ENV} at "
        f"a .safetensors or .pth file)"
    )


def _load_file(spec: NetSpec, path: pathlib.Path, origin: str) -> Weights:
    """Load a user-named file: safetensors, or a torch checkpoint converted in memory."""
    if not path.exists():
        raise UsageError(f"weights file {path} ({origin}) does not exist")
    if not path.is_file():
        raise UsageError(f"weights file {path} ({origin}) is not a file")
    with open(path, "rb") as f:
        head = f.read(10)
    if path.suffix == ".safetensors" or head[8:10] == b'{"':
        return params.load_safetensors(spec, path)
    return conversion.load_torch_weights(spec, path)


def _from_torch_hub(spec: NetSpec) -> Weights | None:
    hub = torch_hub_checkpoint_dir()
    for name in spec.weights.files:
        src = hub / name
        if src.is_file():
            weights = conversion.load_torch_weights(spec, src)
            try:
                return conversion.save_weights(weights.params, weights.provenance, cached_weights_path(spec))
            except UsageError as e:  # read-only cache: still usable, converted again next time
                warnings.warn(f"{e}; using {src} converted in memory", WeightsWarning, stacklevel=3)
                return weights
    return None


def _from_dnnbrain(spec: NetSpec) -> Weights | None:
    path = dnnbrain_checkpoint_path(spec)
    if path is None or not path.is_file():
        return None
    weights = conversion.load_torch_weights(spec, path)
    known = [p for p in (name_hash_prefix(n) for n in spec.weights.files) if p]
    if known and not any(weights.sha256.startswith(p) for p in known):
        warnings.warn(
            f"{path} has sha256 {weights.sha256}, which matches none of the published "
            f"{spec.name} checkpoints ({', '.join(spec.weights.files)}); using it anyway",
            WeightsWarning,
            stacklevel=3,
        )
    return weights


def check_layer_weights(spec: NetSpec, weights: Weights, layer: str):
    """The layer's info (`spec.layer`); a UsageError if it is unknown or `weights` lack what it
    needs. JAX-free, so the command checks before importing JAX."""
    info = spec.layer(layer)
    missing = weights.missing_stages(spec, layer)
    if missing:
        raise UsageError(missing_weights_message(spec, layer, missing, weights))
    return info


def load_weights(spec: NetSpec, path: str | os.PathLike | None = None) -> Weights:
    """The weights for `spec`, from `path` or the first source found (see the module docstring).

    Every problem a user can fix raises `UsageError` naming the file and the fix. Whether the
    weights cover a target layer is `check_layer_weights`'s question.
    """
    if path is not None and os.fspath(path) != "":
        return _load_file(spec, pathlib.Path(path).expanduser().absolute(), "given explicitly")
    env = _env_path(WEIGHTS_ENV)
    if env is not None:
        return _load_file(spec, env.absolute(), f"from ${WEIGHTS_ENV}")
    cached = cached_weights_path(spec)
    if cached.is_file():
        return params.load_safetensors(spec, cached)
    for finder in (_from_torch_hub, _from_dnnbrain):
        weights = finder(spec)
        if weights is not None:
            return weights
    bundled = bundled_weights_path(spec)
    if bundled is None:
        raise UsageError(
            f"no weights found for {spec.name} (none are bundled): run `jaxsal-convert --download "
            f"--net {spec.name}`, put {spec.weights.files[0]} in the torch hub cache "
            f"({torch_hub_checkpoint_dir()}), or set {WEIGHTS_ENV} to a converted .safetensors or "
            f"a torchvision .pth file"
        )
    return params.load_safetensors(spec, bundled)


__all__ = [
    "WeightsWarning", "cache_dir", "cached_weights_path", "torch_hub_checkpoint_dir",
    "dnnbrain_checkpoint_path", "bundled_weights_path", "check_layer_weights",
    "missing_weights_message", "load_weights",
]
