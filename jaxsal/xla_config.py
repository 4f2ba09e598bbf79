"""Process-wide XLA settings, applied only when asked: `tune_cpu` (the command calls it at its
entry; API users opt in with `jaxsal.tune_cpu()` before their first computation) and the
persistent compilation cache.

Importing jaxsal changes nothing in the process. This module stays free of a top-level
`import jax`: `tune_cpu` must run before JAX reads XLA_FLAGS.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, MutableMapping

# Keep XLA's CPU convolutions on its Eigen kernels and only its matmuls on YNNPACK: jaxlib 0.10.2
# routes both to YNNPACK by default, whose convolutions are the slower ones for these networks
# (BENCHMARKS.md has the measurements). The flag is experimental: XLA aborts the whole process on
# a flag it does not know, and its effect may change between releases, so it is added only for
# the jaxlib versions below, on which it was measured and the parity tests passed. In float64 it
# is a loss (Eigen's float64 convolutions are much slower): do not call `tune_cpu` for that.
EIGEN_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
EIGEN_CONV_VERIFIED_JAXLIB = frozenset({"0.10.2"})

# Set to 0 to make `tune_cpu` (and so the command) leave XLA_FLAGS alone whatever the version.
OPT_OUT_ENV = "JAXSAL_XLA_TUNING"


def jaxlib_version() -> str | None:
    """The installed jaxlib's release version, or None when unknown (not installed, a build from
    source, an unreadable file). Read from jaxlib/version.py without importing jaxlib: importing
    it (or `importlib.metadata`) would cost tens of milliseconds at start-up."""
    try:
        spec = importlib.util.find_spec("jaxlib")
        locations = list(spec.submodule_search_locations or []) if spec else []
        for folder in locations:
            path = os.path.join(folder, "version.py")
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    return _release_version(f.read())
    except (ImportError, OSError, ValueError):
        pass
    return None


def _release_version(source: str) -> str | None:
    """The string assigned to `_release_version` in jaxlib/version.py; None for a build from
    source (`_release_version = None`) or a file laid out otherwise."""
    for line in source.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.split(":")[0].strip() == "_release_version":
            value = value.split("#")[0].strip()
            if len(value) > 2 and value[0] == value[-1] and value[0] in "'\"":
                return value[1:-1]
            return None
    return None


def accelerator_plugins_installed() -> bool:
    """Whether a GPU/TPU PJRT plugin is installed (jax_plugins.* or libtpu). Such a plugin embeds
    its own XLA, which parses XLA_FLAGS too and might not know a CPU flag."""
    try:
        spec = importlib.util.find_spec("jax_plugins")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            if any(not entry.startswith(("_", ".")) for entry in os.listdir(folder)):
                return True
        return importlib.util.find_spec("libtpu") is not None
    except (ImportError, OSError, ValueError):
        return True  # cannot tell: assume the worst


def cpu_only(environ: Mapping[str, str], plugins: bool) -> bool:
    """True when JAX will only use its CPU backend: JAX_PLATFORMS (or the older
    JAX_PLATFORM_NAME) asks for cpu alone, or no accelerator plugin is installed."""
    platforms = environ.get("JAX_PLATFORMS") or environ.get("JAX_PLATFORM_NAME") or ""
    requested = {p.strip().lower() for p in platforms.split(",") if p.strip()}
    if requested:
        return requested == {"cpu"}
    return not plugins


def xla_flags_to_add(environ: Mapping[str, str], jaxlib: str | None, plugins: bool) -> list[str]:
    """The XLA flags jaxsal would append to XLA_FLAGS (pure; see `configure_xla_flags`).

    Nothing when: the user opted out ($JAXSAL_XLA_TUNING=0), the jaxlib version is not one the
    flag was verified on, JAX may use an accelerator, or the user's XLA_FLAGS already mention
    YNN (their choice wins, whatever it is).
    """
    if environ.get(OPT_OUT_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return []
    if jaxlib not in EIGEN_CONV_VERIFIED_JAXLIB:
        return []
    if not cpu_only(environ, plugins):
        return []
    if "ynn" in environ.get("XLA_FLAGS", "").lower():
        return []
    return [EIGEN_CONV_FLAG]


def _backend_initialised() -> bool:
    """Whether JAX has already created its backends (then XLA_FLAGS has been read: too late)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None)) if bridge is not None else False


def tune_cpu(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Append jaxsal's verified XLA CPU flags to XLA_FLAGS, never overriding the user's.

    Helps float32 saliency maps on CPUs (~1.2x); hurts float64 convolutions (~20x slower), and
    changes every JAX computation of the process, not only jaxsal's. Effective only before JAX
    initialises its backend (its first computation); afterwards it does nothing. Cheap (no JAX
    import). Returns the flags it added.
    """
    environ = os.environ if environ is None else environ
    if _backend_initialised():
        return []
    added = xla_flags_to_add(environ, jaxlib_version(), accelerator_plugins_installed())
    if added:
        current = environ.get("XLA_FLAGS", "").strip()
        environ["XLA_FLAGS"] = " ".join([current, *added]) if current else " ".join(added)
    return added


def enable_compilation_cache(folder: str | os.PathLike) -> None:
    """Persist compiled executables in `folder`, so a second identical run skips compilation."""
    import pathlib

    import jax

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
