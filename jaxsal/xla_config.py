"""Process-wide XLA settings: the CPU tuning and the persistent compilation cache.

CPU tuning (`tune_cpu`): one XLA flag that makes float32 maps faster on CPUs. The command
applies it at its entry; from Python, jaxsal applies it itself when it is the first to start
JAX's backend (`tune_cpu_on_first_use`, called by `load_net`/`net_from_weights` and
`jaxsal.run`), so `jaxsal.saliency` as imported runs at the command's speed. Importing jaxsal
changes nothing in the process. This module stays free of a top-level `import jax`: the flag
must be set before JAX reads XLA_FLAGS.

The compilation cache (`enable_compilation_cache`) is optional: a folder that cannot be used
is one warning, and entries that changed after a run wrote them are dropped, never loaded.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
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


_TRUE = ("1", "true", "t", "yes", "y", "on")


def x64_enabled(environ: Mapping[str, str]) -> bool:
    """Whether JAX computes in float64 (`jax_enable_x64`): read from JAX's config if JAX is
    imported (it also reflects `jax.enable_x64(True)` blocks), else from $JAX_ENABLE_X64."""
    jax = sys.modules.get("jax")
    config = getattr(jax, "config", None)
    if config is not None:
        try:
            return bool(config.jax_enable_x64)
        except AttributeError:
            pass
    return environ.get("JAX_ENABLE_X64", "").strip().lower() in _TRUE


def tune_cpu(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Append jaxsal's verified XLA CPU flags to XLA_FLAGS, never overriding the user's.

    Helps float32 saliency maps on CPUs (~1.2x); hurts float64 convolutions (~20x slower), and
    changes every JAX computation of the process, not only jaxsal's. Effective only before JAX
    initialises its backend (its first computation); afterwards it does nothing. Cheap (no JAX
    import). Returns the flags it added. jaxsal calls it itself (`tune_cpu_on_first_use`);
    calling it is only needed to tune a process whose first JAX computation is not jaxsal's.
    """
    environ = os.environ if environ is None else environ
    if _backend_initialised():
        return []
    added = xla_flags_to_add(environ, jaxlib_version(), accelerator_plugins_installed())
    if added:
        current = environ.get("XLA_FLAGS", "").strip()
        environ["XLA_FLAGS"] = " ".join([current, *added]) if current else " ".join(added)
    return added


_first_use_done = False  # tune_cpu_on_first_use decides once per process


def tune_cpu_on_first_use(reporter=None, environ: MutableMapping[str, str] | None = None) -> list[str]:
    """`tune_cpu` when jaxsal is about to start JAX's backend, once per process: what makes
    `jaxsal.load_net` + `jaxsal.saliency` as fast as the command without an import-time side
    effect. Nothing happens if the tuning does not apply here (opted out with
    $JAXSAL_XLA_TUNING=0, an unverified jaxlib, an accelerator, the user's own YNN flags, or
    already applied). Otherwise one line says why it is not applied when:
      - JAX's backend was started before jaxsal's first call: too late (XLA read its flags);
      - float64 is on (`jax_enable_x64`): the tuning would make float64 convolutions ~20x
        slower, so the process is left as it is.
    `reporter`: where that line goes (a `jaxsal.reporting.Reporter`; default `jaxsal: ...` on
    stderr). Returns the flags added.
    """
    global _first_use_done
    if _first_use_done:
        return []
    _first_use_done = True
    environ = os.environ if environ is None else environ
    if not xla_flags_to_add(environ, jaxlib_version(), accelerator_plugins_installed()):
        return []
    if reporter is None:
        from jaxsal.reporting import Reporter

        reporter = Reporter()
    if _backend_initialised():
        reporter.info(f"note: JAX started before jaxsal, too late for its CPU tuning (~1.2x "
                      f"faster float32 maps): call jaxsal.tune_cpu() before the first JAX "
                      f"computation, or set {OPT_OUT_ENV}=0 to silence this")
        return []
    if x64_enabled(environ):
        reporter.info(f"note: CPU tuning not applied because float64 is on (jax_enable_x64): "
                      f"it makes float64 convolutions ~20x slower ({OPT_OUT_ENV}=0 silences "
                      f"this)")
        return []
    return tune_cpu(environ)


# ---------------------------------------------------------------------------------------------
# The persistent compilation cache

# Compilations shorter than this are not worth a cache entry (JAX's option of the same name).
CACHE_MIN_COMPILE_SECONDS = 0.5
_ENTRY_SUFFIX = "-cache"  # JAX's file-system cache: `<key>-cache`, and `<key>-atime` beside it


class CompilationCache:
    """A folder of JAX's persistent compilation cache with a manifest of the entries that runs
    which finished wrote, and their sha256.

    JAX loads a cache entry without checking it, and a changed entry (a disk error, a copy cut
    short, tampering) can crash the process -- every later run, until the entry is deleted.
    So before JAX may read the folder, `verify` drops every entry that is not in the manifest
    (a run that did not finish wrote it, or it was half-written) or whose bytes changed; after
    a run that finished, `seal` records the entries present.
    """

    MANIFEST = "jaxsal-manifest.json"

    def __init__(self, folder: str | os.PathLike, reporter=None):
        if reporter is None:
            from jaxsal.reporting import Reporter

            reporter = Reporter()
        self.folder, self.reporter = pathlib.Path(folder), reporter
        self.manifest_path = self.folder / self.MANIFEST
        self._verified: dict[str, str] = {}  # entry file name -> sha256, as verified

    def entries(self) -> list[pathlib.Path]:
        return sorted(p for p in self.folder.glob(f"*{_ENTRY_SUFFIX}") if p.is_file())

    def _manifest(self) -> dict[str, str]:
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            entries = data.get("entries", {}) if isinstance(data, dict) else {}
            return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, str)}
        except (OSError, ValueError):
            return {}

    def verify(self) -> list[str]:
        """Drop every entry not sealed with its current bytes; returns the names of the sealed
        entries whose bytes changed (the ones worth a warning; unsealed ones are expected after
        an interrupted run)."""
        sealed = self._manifest()
        changed = []
        self._verified = {}
        for path in self.entries():
            digest = sealed.get(path.name)
            if digest is not None and _sha256(path) == digest:
                self._verified[path.name] = digest
                continue
            if digest is not None:
                changed.append(path.name)
            self._drop(path)
        return changed

    def seal(self) -> None:
        """Record the entries now in the folder (after a run that finished); those verified at
        the start keep their digest, new ones are hashed. If the manifest cannot be written,
        one warning: the next run compiles again."""
        from jaxsal.atomic import write_bytes_atomically
        from jaxsal.errors import UsageError

        try:
            entries = {p.name: self._verified.get(p.name) or _sha256(p) for p in self.entries()}
            text = json.dumps({"format": "jaxsal-xla-cache-v1", "entries": entries}, indent=1,
                              sort_keys=True)
            write_bytes_atomically(self.manifest_path, text.encode("utf-8"))
        except (OSError, UsageError) as e:
            self.reporter.warn(f"compilation cache not recorded ({getattr(e, 'strerror', None) or e}); "
                               f"the next run compiles anew")

    def _drop(self, entry: pathlib.Path) -> None:
        key = entry.name[: -len(_ENTRY_SUFFIX)]
        for path in (entry, entry.with_name(f"{key}-atime")):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def enable_compilation_cache(folder: str | os.PathLike, reporter=None) -> CompilationCache | None:
    """Persist compiled executables in `folder`, so a second identical run skips compilation;
    returns the cache, to `seal()` once the run has finished.

    The cache is optional: if `folder` cannot be created or written, one warning line (through
    `reporter`) and the run goes on without it (None). Entries that a finished run did not
    write, or whose bytes changed since, are dropped first (`CompilationCache.verify`).
    """
    folder = pathlib.Path(folder)
    cache = CompilationCache(folder, reporter)
    reporter = cache.reporter
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, os.strerror(13))
        changed = cache.verify()
    except OSError as e:
        reporter.warn(f"compilation cache off (cannot use {folder}: {e.strerror or e}); "
                      f"compiling anew each run")
        return None
    if changed:
        reporter.warn(f"dropped {len(changed)} file(s) of the compilation cache {folder} that "
                      f"changed after a run wrote them (corrupted or tampered with); compiling "
                      f"anew")
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache
