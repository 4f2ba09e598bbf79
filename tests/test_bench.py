"""scripts/bench.py: its FLOP count, and a tiny end-to-end run whose JSON line parses (no timing
assertions)."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("jaxsal_bench_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_flop_count():
    bench = load_bench()
    from jaxsal.models import get_net_spec

    spec = get_net_spec("AlexNet")
    macs = dict(bench.layer_macs(spec))
    assert macs["conv1"] == 64 * 55 * 55 * 11 * 11 * 3
    assert macs["conv2"] == 192 * 27 * 27 * 5 * 5 * 64
    assert macs["fc1"] == 9216 * 4096
    fc3 = bench.flops_per_map(spec, "fc3", 2)
    assert fc3["forward_gflop_per_image"] == pytest.approx(1.428, abs=1e-3)
    # one forward shared by 2 channels + one VJP per channel: 1.5 forwards per map
    assert fc3["standard_gflop_per_map"] == pytest.approx(1.5 * 1.428, abs=1e-3)
    conv5 = bench.flops_per_map(spec, "conv5", 2)
    assert conv5["forward_gflop_per_image"] == pytest.approx(1.311, abs=1e-3)
    assert conv5["executed_gflop_per_map"] == pytest.approx(1.5 * (1.311 - 2 * macs["conv5"] / 1e9), abs=1e-3)


@pytest.mark.parametrize("name,gmac", [("Resnet18", 1.814), ("Resnet34", 3.664), ("Densenet121", 2.834)])
def test_flop_count_of_the_networks_beyond_the_original(name, gmac):
    """Multiply-accumulates per 224 x 224 image, as torchvision's model table gives them
    ("GFLOPS" 1.81, 3.66, 2.83): basic blocks, dense blocks and transitions are counted."""
    from jaxsal.models import get_net_spec

    macs = sum(m for _, m in load_bench().layer_macs(get_net_spec(name)))
    assert macs / 1e9 == pytest.approx(gmac, abs=1e-3)


def test_flop_count_of_a_transformer():
    """ViT-B/16: per block 4 T C^2 (projections) + 2 T^2 C (attention products) + 2 T C M (MLP)
    forward; the input gradient needs both factors' gradients of the attention products."""
    bench = load_bench()
    from jaxsal.models import get_net_spec

    spec = get_net_spec("VitB16")
    t, c, m = 197, 768, 3072
    block = 4 * t * c * c + 2 * t * t * c + 2 * t * c * m
    macs, vjp = dict(bench.layer_macs(spec)), dict(bench.layer_macs(spec, vjp=True))
    assert macs["conv_proj"] == vjp["conv_proj"] == 768 * 14 * 14 * 16 * 16 * 3
    assert macs["encoder_layer5"] == block and vjp["encoder_layer5"] == block + 2 * t * t * c
    assert macs["head"] == 768 * 1000
    head = bench.flops_per_map(spec, "head", 2)
    assert head["forward_gflop_per_image"] == pytest.approx(2 * sum(macs.values()) / 1e9)
    assert head["standard_gflop_per_map"] == pytest.approx((sum(macs.values()) + 2 * sum(vjp.values())) / 1e9)
    assert head["forward_gflop_per_image"] == pytest.approx(35.13, abs=0.01)  # torchvision: 17.56 GMAC


@pytest.mark.slow
def test_tiny_run_prints_parsable_json():
    pytest.importorskip("torch")
    cmd = [sys.executable, str(SCRIPT), "--layers", "conv1", "--methods", "guided", "--batches", "1",
           "--repeats", "1", "--orig-images", "1", "--precision-cases", "conv1:vanilla:1",
           "--no-peak", "--json-only"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [l for l in out.stdout.splitlines() if l.startswith("BENCH_JSON ")]
    assert len(lines) == 1
    report = json.loads(lines[0][len("BENCH_JSON "):])
    for key in ("machine", "versions", "flops", "cases", "precision", "summary"):
        assert key in report
    assert {"cpu", "cores"} <= set(report["machine"])
    (case,) = report["cases"]
    assert set(case["maps_per_s"]) == {"orig", "orig_no_weight_grads", "torch", "jax"}
    for key in ("ratio_jax_vs_torch", "ratio_jax_vs_orig", "ratio_jax_vs_orig_no_weight_grads",
                "jax_compile_s", "parity_vs_torch", "fraction_of_matmul_peak"):
        assert key in case
    assert case["parity_vs_torch"]["median_rel_err"] < 1e-4
    assert [p["precision"] for p in report["precision"]] == ["highest", "default", "bfloat16"]
    assert "conv1/guided/N=1" in report["summary"]


@pytest.mark.slow
def test_accelerator_rows_run_on_cpu_and_print_json():
    """The GPU check's code path (scripts/gpu_check.sh), exercised on the CPU: every precision,
    jaxsal against PyTorch at the same precision."""
    pytest.importorskip("torch")
    cmd = [sys.executable, str(SCRIPT), "--accelerator-rows", "--torch-device", "cpu",
           "--layers", "conv1", "--methods", "guided", "--accel-batches", "2", "--repeats", "1",
           "--json-only"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [l for l in out.stdout.splitlines() if l.startswith("BENCH_JSON ")]
    rows = json.loads(line[len("BENCH_JSON "):])["accelerator"]
    assert [r["precision"] for r in rows] == ["highest", "default", "bfloat16"]
    assert all(r["batch"] == 2 and r["torch_device"] == "cpu" for r in rows)
    assert rows[0]["median_rel_err_vs_torch_same_precision"] < 1e-5
    assert rows[0]["max_rel_err_vs_highest"] == 0.0


@pytest.mark.slow
def test_command_end_to_end_mode_runs_the_command_and_prints_json():
    """--cli-only: the command on generated stimuli (here 3 camera-size photos), cold, with its
    figures counted and its compute measured alongside."""
    pytest.importorskip("torch")
    cmd = [sys.executable, str(SCRIPT), "--cli-only", "--cli-images", "3", "--cli-repeats", "0",
           "--cli-stimuli", "photos", "--json-only"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [l for l in out.stdout.splitlines() if l.startswith("BENCH_JSON ")]
    cli = json.loads(line[len("BENCH_JSON "):])["cli"]
    assert cli["stimuli"] == "photos" and cli["images"] == 3
    (run,) = cli["runs"]
    assert run["returncode"] == 0 and run["finish_lines"] == 1, run
    assert any("profile: total" in p for p in run["profile"])
    assert cli["pure_compute_batch_size"] == 3 and len(cli["pure_compute"]) == 1
    assert cli["compilation_cache_entries"] >= 1


@pytest.mark.slow
def test_api_benchmark_runs_each_side_in_its_own_process_and_prints_json():
    """scripts/bench_api.py: jaxsal.saliency as imported (tuned by jaxsal itself when the tuning
    applies here) vs PyTorch done well in a process without JAX, on the same maps."""
    pytest.importorskip("torch")
    from jaxsal import xla_config

    script = SCRIPT.with_name("bench_api.py")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_config.OPT_OUT_ENV)}
    cmd = [sys.executable, str(script), "--layers", "conv1", "--batch", "1", "--repeats", "1",
           "--rounds", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [l for l in out.stdout.splitlines() if l.startswith("BENCH_JSON ")]
    (row,) = json.loads(line[len("BENCH_JSON "):])["rows"]
    assert row["layer"] == "conv1" and row["ratio_jaxsal_vs_torch"] > 0
    assert row["parity"]["median_rel_err"] < 1e-5
    tuned = bool(xla_config.xla_flags_to_add({}, xla_config.jaxlib_version(),
                                             xla_config.accelerator_plugins_installed()))
    assert row["jaxsal_tuned"] is tuned


@pytest.mark.slow
def test_all_units_mode_runs_each_side_in_its_own_process():
    """--all-units on AlexNet conv1 (64 units), one image: jaxsal's channel blocks, its calls of
    5 channels and PyTorch, the two sides in two processes; the blocks' first 5 maps equal the
    calls of 5."""
    pytest.importorskip("torch")
    cmd = [sys.executable, str(SCRIPT), "--all-units", "--all-units-layer", "conv1",
           "--all-units-images", "1", "--repeats", "1", "--json-only"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [l for l in out.stdout.splitlines() if l.startswith("BENCH_JSON ")]
    r = json.loads(line[len("BENCH_JSON "):])["all_units"]
    assert r["units"] == 64 and set(r["maps_per_s"]) == {"blocks", "runs_of_5", "torch"}
    assert r["sides"]["jax"]["calls_of_5"] == 13 and r["sides"]["torch"]["side"] == "torch"
    assert r["sides"]["jax"]["max_rel_diff_first_5"] < 1e-6
    assert r["ratio_blocks_vs_torch"] > 0 and r["ratio_blocks_vs_runs_of_5"] > 0


@pytest.mark.slow
def test_sanity_benchmark_runs_each_side_in_its_own_process():
    """scripts/bench_sanity.py on 2 stimuli: jaxsal.check and Quantus each in a child process
    (the Quantus one never imports JAX), the same deletion curves on both sides."""
    pytest.importorskip("quantus")
    cmd = [sys.executable, str(SCRIPT.with_name("bench_sanity.py")), "--stimuli", "2",
           "--channels", "60", "--methods", "vanilla"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [l for l in out.stdout.splitlines() if l.startswith("BENCH_JSON ")]
    r = json.loads(line[len("BENCH_JSON "):])
    assert r["jaxsal_warm_s"] > 0 and r["quantus_s"] > 0
    assert r["deletion_max_rel_diff"] < 1e-3
    medians = r["mprt_median_spearman_abs"]["vanilla"]
    assert list(medians["jaxsal"]) == ["conv5", "conv4", "conv3", "conv2", "conv1"]
    assert len(medians["quantus"]) == 5
