"""jaxsal.runtime's XLA flag logic: the Eigen-convolution flag is appended only on a verified
jaxlib, CPU-only, when the user has not set it, and never replaces the user's XLA_FLAGS. Fast; no
JAX computation (subprocesses check the import-time behaviour)."""
import os
import subprocess
import sys

import pytest

from jaxsal import runtime
from jaxsal.runtime import EIGEN_CONV_FLAG, configure_xla_flags, xla_flags_to_add

VERIFIED = sorted(runtime.EIGEN_CONV_VERIFIED_JAXLIB)[0]


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
    assert configure_xla_flags_pure(env) == [EIGEN_CONV_FLAG]
    assert env["XLA_FLAGS"] == f"--xla_cpu_enable_fast_math=false {EIGEN_CONV_FLAG}"


def test_idempotent():
    env = {}
    configure_xla_flags_pure(env)
    configure_xla_flags_pure(env)
    assert env["XLA_FLAGS"] == EIGEN_CONV_FLAG


@pytest.mark.parametrize("value", ["0", "false", "OFF", "no"])
def test_opt_out(value):
    assert xla_flags_to_add({runtime.OPT_OUT_ENV: value}, VERIFIED, plugins=False) == []


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
    parse = runtime._release_version
    assert parse("_version = '0.9'\n_release_version: str = '0.10.2'\n") == "0.10.2"
    assert parse('_release_version = "1.2.3"  # set by the build\n') == "1.2.3"
    assert parse("_release_version = None\n") is None  # a build from source: unknown binary
    assert parse("version = '0.10.2'\n") is None


def test_installed_jaxlib_version_matches_the_package():
    import jaxlib

    assert runtime.jaxlib_version() == jaxlib.__version__


def configure_xla_flags_pure(env):
    """configure_xla_flags on `env`, with this machine's jaxlib replaced by a verified one."""
    saved = runtime.jaxlib_version, runtime.accelerator_plugins_installed, runtime._backend_initialised
    runtime.jaxlib_version = lambda: VERIFIED
    runtime.accelerator_plugins_installed = lambda: False
    runtime._backend_initialised = lambda: False
    try:
        return configure_xla_flags(env)
    finally:
        runtime.jaxlib_version, runtime.accelerator_plugins_installed, runtime._backend_initialised = saved


def _xla_flags_after_import(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", runtime.OPT_OUT_ENV)}
    env.update(env_extra)
    code = "import os, jaxsal, sys; assert 'jax' not in sys.modules; print(os.environ.get('XLA_FLAGS', '<unset>'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_jaxsal_sets_flags_without_importing_jax():
    expected = xla_flags_to_add({}, runtime.jaxlib_version(), runtime.accelerator_plugins_installed())
    got = _xla_flags_after_import({})
    assert got == (" ".join(expected) if expected else "<unset>")


def test_import_jaxsal_keeps_user_flags():
    user = "--xla_cpu_experimental_ynn_fusion_type=-individual_dot"
    assert _xla_flags_after_import({"XLA_FLAGS": user}) == user
    assert _xla_flags_after_import({runtime.OPT_OUT_ENV: "0"}) == "<unset>"
