"""jaxsal.xla_config: the XLA flag logic -- `tune_cpu` appends the Eigen-convolution flag only on
a verified jaxlib, CPU-only, when the user has not set it, and never replaces the user's
XLA_FLAGS; importing jaxsal changes nothing; the command tunes at its entry, the API when jaxsal
is first to start JAX (not after JAX started, not with float64 on: one line each) -- and the
compilation cache (optional; changed entries dropped, never run). No JAX computation in this
process (fresh subprocesses check the process-wide behaviour)."""
import os
import pathlib
import struct
import subprocess
import sys
import zlib

import pytest

from jaxsal import xla_config
from jaxsal.xla_config import EIGEN_CONV_FLAG, tune_cpu, xla_flags_to_add

VERIFIED = sorted(xla_config.EIGEN_CONV_VERIFIED_JAXLIB)[0]


def test_added_on_verified_cpu_only_jaxlib():
    assert xla_flags_to_add({}, VERIFIED, plugins=False) == [EIGEN_CONV_FLAG]


@pytest.mark.parametrize("version", [None, "0.4.30", "0.10.1", "0.10.3", "0.11.0", "0.10.2.dev20260101"])
def test_unverified_or_unknown_jaxlib_leaves_flags_alone(version):
    # XLA aborts the process on a flag it does not know: only exact verified versions get it.
    assert xla_flags_to_add({}, version, plugins=False) == []


@pytest.mark.parametrize("user", [
    "--xla_cpu_experimental_ynn_fusion_type=-individual_dot",
    "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    "--xla_dump_to=/tmp/x --xla_cpu_experimental_YNN_fusion_type=",
])
def test_user_ynn_setting_wins(user):
    assert xla_flags_to_add({"XLA_FLAGS": user}, VERIFIED, plugins=False) == []


def test_other_user_flags_are_kept_and_appended_to():
    env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false  "}
    assert tune_cpu_pure(env) == [EIGEN_CONV_FLAG]
    assert env["XLA_FLAGS"] == f"--xla_cpu_enable_fast_math=false {EIGEN_CONV_FLAG}"


def test_idempotent():
    env = {}
    assert tune_cpu_pure(env) == [EIGEN_CONV_FLAG]
    assert tune_cpu_pure(env) == []
    assert env["XLA_FLAGS"] == EIGEN_CONV_FLAG


def test_too_late_once_the_backend_is_initialised():
    env = {}
    assert tune_cpu_pure(env, backend_initialised=True) == [] and env == {}


@pytest.mark.parametrize("value", ["0", "false", "OFF", "no"])
def test_opt_out(value):
    assert xla_flags_to_add({xla_config.OPT_OUT_ENV: value}, VERIFIED, plugins=False) == []


@pytest.mark.parametrize("env,plugins,added", [
    ({}, True, False),  # a GPU/TPU plugin is installed and may run: its XLA parses XLA_FLAGS too
    ({"JAX_PLATFORMS": "cpu"}, True, True),  # ... unless JAX is told to use the CPU only
    ({"JAX_PLATFORMS": "cuda"}, False, False),
    ({"JAX_PLATFORMS": "cuda,cpu"}, True, False),
    ({"JAX_PLATFORM_NAME": "cpu"}, True, True),
    ({"JAX_PLATFORMS": ""}, False, True),
])
def test_cpu_only(env, plugins, added):
    assert bool(xla_flags_to_add(env, VERIFIED, plugins)) is added


def test_release_version_parsing():
    parse = xla_config._release_version
    assert parse("_version = '0.9'\n_release_version: str = '0.10.2'\n") == "0.10.2"
    assert parse('_release_version = "1.2.3"  # set by the build\n') == "1.2.3"
    assert parse("_release_version = None\n") is None  # a build from source: unknown binary
    assert parse("version = '0.10.2'\n") is None


def test_installed_jaxlib_version_matches_the_package():
    import jaxlib

    assert xla_config.jaxlib_version() == jaxlib.__version__


def test_tune_cpu_is_the_package_attribute():
    import jaxsal

    assert jaxsal.tune_cpu is tune_cpu and "tune_cpu" in jaxsal.__all__


def tune_cpu_pure(env, backend_initialised=False):
    """tune_cpu on `env`, with this machine's jaxlib replaced by a verified one."""
    saved = xla_config.jaxlib_version, xla_config.accelerator_plugins_installed, xla_config._backend_initialised
    xla_config.jaxlib_version = lambda: VERIFIED
    xla_config.accelerator_plugins_installed = lambda: False
    xla_config._backend_initialised = lambda: backend_initialised
    try:
        return tune_cpu(env)
    finally:
        xla_config.jaxlib_version, xla_config.accelerator_plugins_installed, xla_config._backend_initialised = saved


# ---------------------------------------------------------------------------------------------
# In a fresh process


def _xla_flags_after(code: str, env_extra: dict) -> str:
    """Run `code` in a fresh interpreter whose environment has no XLA_FLAGS or opt-out (unless
    `env_extra` sets them); returns XLA_FLAGS as the code left it, or '<unset>'."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_config.OPT_OUT_ENV)}
    env.update(env_extra)
    code += "\nimport os; print(os.environ.get('XLA_FLAGS', '<unset>'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def _expected_on_this_machine() -> list[str]:
    return xla_flags_to_add({}, xla_config.jaxlib_version(), xla_config.accelerator_plugins_installed())


IMPORT_ONLY = "import sys, jaxsal; assert 'jax' not in sys.modules, 'import jaxsal imported JAX'"


@pytest.mark.parametrize("user", [
    None, pytest.param("--xla_cpu_enable_fast_math=false", marks=pytest.mark.slow)])
def test_import_jaxsal_leaves_xla_flags_unchanged(user):
    env = {} if user is None else {"XLA_FLAGS": user}
    assert _xla_flags_after(IMPORT_ONLY, env) == (user or "<unset>")
    # Nor do the modules that compute, or the command's module, when merely imported.
    heavy = "import jaxsal, jaxsal.api, jaxsal.batching, jaxsal.cli, jaxsal.core; jaxsal.saliency"
    assert _xla_flags_after(heavy, env) == (user or "<unset>")


def test_tune_cpu_adds_the_flag():
    expected = _expected_on_this_machine()
    code = "import jaxsal; print(jaxsal.tune_cpu())"
    got = _xla_flags_after(code, {})
    assert got == (" ".join(expected) if expected else "<unset>")
    if xla_config.jaxlib_version() in xla_config.EIGEN_CONV_VERIFIED_JAXLIB \
            and not xla_config.accelerator_plugins_installed():
        assert got == EIGEN_CONV_FLAG  # this machine: a verified jaxlib, CPU only
    user = "--xla_cpu_enable_fast_math=false"
    assert _xla_flags_after(code, {"XLA_FLAGS": user}) == " ".join([user, *expected])


@pytest.mark.slow
def test_tune_cpu_after_the_first_computation_does_nothing():
    code = ("import jax.numpy as jnp; jnp.ones(2).block_until_ready()\n"
            "import jaxsal; assert jaxsal.tune_cpu() == []")
    assert _xla_flags_after(code, {}) == "<unset>"


def test_tune_cpu_keeps_user_flags():
    user = "--xla_cpu_experimental_ynn_fusion_type=-individual_dot"
    code = "import jaxsal; jaxsal.tune_cpu()"
    assert _xla_flags_after(code, {"XLA_FLAGS": user}) == user
    assert _xla_flags_after(code, {xla_config.OPT_OUT_ENV: "0"}) == "<unset>"


def test_the_command_tunes_at_its_entry():
    expected = _expected_on_this_machine()
    code = "from jaxsal import cli; assert cli.main(['dnn_saliency', '-help']) == 0"
    assert _xla_flags_after(code, {}) == (" ".join(expected) if expected else "<unset>")


# ---------------------------------------------------------------------------------------------
# jaxsal tunes the CPU itself when it is the first to start JAX (tune_cpu_on_first_use)


class Lines:
    """A Reporter's lines, collected (jaxsal.reporting.Reporter's interface)."""

    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(message)


def first_use(env, backend_initialised=False, x64=False):
    """tune_cpu_on_first_use on `env` in a fresh state, this machine's jaxlib replaced by a
    verified one; (flags added, lines said)."""
    saved = (xla_config.jaxlib_version, xla_config.accelerator_plugins_installed,
             xla_config._backend_initialised, xla_config.x64_enabled, xla_config._first_use_done)
    xla_config.jaxlib_version = lambda: VERIFIED
    xla_config.accelerator_plugins_installed = lambda: False
    xla_config._backend_initialised = lambda: backend_initialised
    xla_config.x64_enabled = lambda environ: x64
    xla_config._first_use_done = False
    said = Lines()
    try:
        return xla_config.tune_cpu_on_first_use(said, env), said.lines
    finally:
        (xla_config.jaxlib_version, xla_config.accelerator_plugins_installed,
         xla_config._backend_initialised, xla_config.x64_enabled, xla_config._first_use_done) = saved


def test_first_use_tunes_silently_once():
    env = {}
    assert first_use(env) == ([EIGEN_CONV_FLAG], [])
    assert env["XLA_FLAGS"] == EIGEN_CONV_FLAG


@pytest.mark.parametrize("state,words", [
    ({"backend_initialised": True}, ("too late", "jaxsal.tune_cpu()")),  # the user's JAX came first
    ({"x64": True}, ("float64", "20x slower")),
])
def test_first_use_that_cannot_tune_leaves_xla_alone_and_says_why_in_one_line(state, words):
    env = {}
    added, lines = first_use(env, **state)
    assert added == [] and env == {}
    (line,) = lines
    assert all(word in line for word in words) and "\n" not in line


@pytest.mark.parametrize("env", [{xla_config.OPT_OUT_ENV: "0"},
                                 {"XLA_FLAGS": EIGEN_CONV_FLAG},  # tune_cpu() already ran
                                 {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=x"}])
def test_first_use_is_silent_when_the_tuning_does_not_apply(env):
    before = dict(env)
    assert first_use(env, backend_initialised=True) == ([], [])
    assert first_use(env, x64=True) == ([], [])
    assert env == before


def test_first_use_decides_once_per_process():
    saved = xla_config._first_use_done
    xla_config._first_use_done = True
    try:
        said = Lines()
        assert xla_config.tune_cpu_on_first_use(said, {}) == [] and said.lines == []
    finally:
        xla_config._first_use_done = saved


@pytest.mark.parametrize("value,on", [("1", True), ("true", True), ("0", False), ("", False)])
def test_x64_read_from_the_environment_before_jax_is_imported(value, on, monkeypatch):
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    assert xla_config.x64_enabled({"JAX_ENABLE_X64": value}) is on


TINY = ("import sys; sys.path.insert(0, {tests!r}); import tiny_net\n"
        "tiny_net.write_weights({weights!r})\n")


def _load_net_in_a_fresh_process(tmp_path, before: str, env_extra: dict) -> tuple[str, str]:
    """(XLA_FLAGS after `before` then `jaxsal.load_net(TinyNet)`, the process's stderr)."""
    weights = str(tmp_path / "tiny.safetensors")
    code = (TINY.format(tests=os.path.dirname(__file__), weights=weights) + before
            + f"\nimport jaxsal\nnet = jaxsal.load_net('TinyNet', weights={weights!r})\n"
            "import os; print(os.environ.get('XLA_FLAGS', '<unset>'))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", xla_config.OPT_OUT_ENV, "JAX_ENABLE_X64")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1], out.stderr


def test_load_net_as_imported_gets_the_commands_tuning(tmp_path):
    """The API user's fast path: no tune_cpu() call, no import-time side effect, no line."""
    flags, err = _load_net_in_a_fresh_process(tmp_path, "", {})
    expected = _expected_on_this_machine()
    assert flags == (" ".join(expected) if expected else "<unset>")
    assert err == ""


@pytest.mark.slow
@pytest.mark.parametrize("case", ["jax first", "x64 by env", "x64 by config"])
def test_load_net_after_jax_started_or_with_float64_is_not_tuned(tmp_path, case):
    if not _expected_on_this_machine():
        pytest.skip("the tuning does not apply on this machine")
    before, env = {
        "jax first": ("import jax.numpy as jnp; jnp.ones(2).block_until_ready()", {}),
        "x64 by env": ("", {"JAX_ENABLE_X64": "1"}),
        "x64 by config": ("import jax; jax.config.update('jax_enable_x64', True)", {}),
    }[case]
    flags, err = _load_net_in_a_fresh_process(tmp_path, before, env)
    assert flags == "<unset>"
    (line,) = err.splitlines()
    assert line.startswith("jaxsal: note: ")
    assert ("too late" if case == "jax first" else "float64") in line


# ---------------------------------------------------------------------------------------------
# The persistent compilation cache


class Said:
    def __init__(self):
        self.warnings = []

    def warn(self, message):
        self.warnings.append(message)


def _entry(folder, key, data: bytes, atime=True):
    (folder / f"{key}-cache").write_bytes(data)
    if atime:
        (folder / f"{key}-atime").write_bytes(b"\0" * 8)


def test_cache_keeps_sealed_entries_and_drops_changed_and_unsealed_ones(tmp_path):
    said = Said()
    cache = xla_config.CompilationCache(tmp_path, said)
    _entry(tmp_path, "a", b"alpha")
    _entry(tmp_path, "b", b"beta")
    assert cache.verify() == []  # nothing sealed yet: both dropped, silently
    assert sorted(os.listdir(tmp_path)) == []
    _entry(tmp_path, "a", b"alpha")
    _entry(tmp_path, "b", b"beta")
    cache.seal()  # a run finished with these two
    _entry(tmp_path, "c", b"written by a run that did not finish")
    (tmp_path / "b-cache").write_bytes(b"BETA")  # changed after it was sealed
    cache = xla_config.CompilationCache(tmp_path, said)
    assert cache.verify() == ["b-cache"]
    assert sorted(os.listdir(tmp_path)) == ["a-atime", "a-cache", cache.MANIFEST]
    _entry(tmp_path, "d", b"delta", atime=False)
    cache.seal()
    assert xla_config.CompilationCache(tmp_path, said).verify() == []
    assert sorted(os.listdir(tmp_path)) == sorted(["a-atime", "a-cache", cache.MANIFEST, "d-cache"])
    assert said.warnings == []


def test_cache_manifest_that_cannot_be_read_drops_everything(tmp_path):
    _entry(tmp_path, "a", b"alpha")
    (tmp_path / xla_config.CompilationCache.MANIFEST).write_text("{not json")
    assert xla_config.CompilationCache(tmp_path, Said()).verify() == []
    assert os.listdir(tmp_path) == [xla_config.CompilationCache.MANIFEST]


@pytest.mark.parametrize("where", ["under a file", "read-only"])
def test_unusable_cache_folder_is_one_warning_and_no_cache(tmp_path, where):
    if where == "under a file":
        (tmp_path / "file").write_text("")
        folder = tmp_path / "file" / "xla"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes to read-only folders")
        home = tmp_path / "home"
        home.mkdir(mode=0o555)
        folder = home / "xla"
    said = Said()
    assert xla_config.enable_compilation_cache(folder, said) is None
    (line,) = said.warnings
    assert line.startswith("compilation cache off") and str(folder) in line


CACHE_RUN = """\
import sys
sys.path.insert(0, {tests!r})
import tiny_net
from jaxsal import cli, xla_config
xla_config.CACHE_MIN_COMPILE_SECONDS = 0  # TinyNet compiles fast: cache it anyway
if __name__ == "__main__":
    sys.exit(cli.main(['dnn_saliency', '-net', 'TinyNet', '-layer', 'conv3', '-chn', '2',
                       '-stim', {stim!r}, '-weights', {weights!r}, '-out', sys.argv[1]]))
"""


def _zero_machine_code(entry: pathlib.Path) -> bool:
    """Zero the machine code (.text/.ltext of the ELF objects) inside a zlib-compressed XLA CPU
    cache entry, keeping the entry well-formed: what makes JAX crash when it runs the entry.
    False if the entry is not laid out so (another jaxlib)."""
    try:
        raw = bytearray(zlib.decompress(entry.read_bytes()))
    except zlib.error:
        return False
    zeroed, start = 0, 0
    while (elf := raw.find(b"\x7fELF", start)) >= 0:
        start = elf + 4
        try:
            (shoff,) = struct.unpack_from("<Q", raw, elf + 0x28)
            entsize, count, names = struct.unpack_from("<HHH", raw, elf + 0x3A)
            section = lambda i: struct.unpack_from("<IIQQQQ", raw, elf + shoff + i * entsize)  # noqa: E731
            table = section(names)[4]
            for i in range(count):
                name, _, _, _, offset, size = section(i)
                at = elf + table + name
                if raw[at:raw.index(b"\0", at)] in (b".text", b".ltext") and size:
                    raw[elf + offset:elf + offset + size] = bytes(size)
                    zeroed += 1
        except (struct.error, ValueError, IndexError):
            continue
    entry.write_bytes(zlib.compress(bytes(raw)))
    return zeroed > 0


@pytest.mark.slow
def test_a_tampered_cache_entry_is_dropped_and_recompiled_not_run(tmp_path):
    """Without the manifest the second run below crashes (SIGSEGV) running the zeroed code, and
    so does every later run until the entry is deleted by hand."""
    import tiny_net

    weights = tiny_net.write_weights(tmp_path / "tiny.safetensors")
    stim = pathlib.Path(__file__).resolve().parents[1] / "examples" / "examples.stim.csv"
    script = tmp_path / "run.py"
    script.write_text(CACHE_RUN.format(tests=os.path.dirname(__file__), stim=str(stim),
                                       weights=str(weights)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAXSAL_HOME=str(tmp_path / "home"), MPLBACKEND="Agg")

    def run(out):
        done = subprocess.run([sys.executable, str(script), str(tmp_path / out)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert run("first") == ""
    cache = tmp_path / "home" / "xla"
    entries = sorted(cache.glob("*-cache"))
    assert entries and (cache / xla_config.CompilationCache.MANIFEST).is_file()
    for entry in entries:
        if not _zero_machine_code(entry):
            entry.write_bytes(entry.read_bytes()[::-1])  # another layout: change it anyway
    (line,) = run("second").splitlines()  # without the manifest: SIGSEGV
    assert line.startswith("dnn_saliency: warning: dropped ") and "compiling anew" in line
    for name in ("TinyNet_conv3_fig1.jpg", "TinyNet_conv3_fig2.jpg"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()
    assert sorted(p.name for p in cache.glob("*-cache")) == [p.name for p in entries]  # anew


@pytest.mark.slow
def test_a_run_with_an_unusable_jaxsal_home_warns_and_runs(tmp_path):
    import tiny_net

    weights = tiny_net.write_weights(tmp_path / "tiny.safetensors")
    stim = pathlib.Path(__file__).resolve().parents[1] / "examples" / "examples.stim.csv"
    home = tmp_path / "home"
    home.mkdir()
    if os.geteuid() == 0:  # root writes to read-only folders: a home that cannot hold folders
        home = tmp_path / "not_a_folder"
        home.write_text("")
    else:
        home.chmod(0o555)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAXSAL_HOME=str(home), MPLBACKEND="Agg")
    tiny = pathlib.Path(__file__).with_name("tiny_net.py")
    done = subprocess.run([sys.executable, str(tiny), "-net", "TinyNet", "-layer", "conv3", "-chn",
                           "2", "-stim", str(stim), "-weights", str(weights), "-out",
                           str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("dnn_saliency: warning: compilation cache off") and "Traceback" not in done.stderr
    assert done.stdout.splitlines() == ["Finish: 6/7", "Finish: 7/7"]
