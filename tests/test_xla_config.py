"""jaxsal.xla_config's XLA flag logic: `tune_cpu` appends the Eigen-convolution flag only on a
verified jaxlib, CPU-only, when the user has not set it, and never replaces the user's XLA_FLAGS.
Importing jaxsal changes nothing; the command tunes at its entry, API users opt in. Fast; no JAX
computation in this process (fresh subprocesses check the process-wide behaviour)."""
import os
import subprocess
import sys

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


@pytest.mark.parametrize("user", [None, "--xla_cpu_enable_fast_math=false"])
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
