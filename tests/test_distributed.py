"""A run spread over 2 processes on 127.0.0.1 (jax.distributed, CPU) equals a single-process run
(TinyNet with random weights: `python tests/tiny_net.py ARGS` is the command with it registered)."""
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxsal.distributed import Cluster
from jaxsal.errors import UsageError

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_SCRIPT = pathlib.Path(__file__).with_name("tiny_net.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shares_are_disjoint_round_robin_and_cover_everything():
    shares = [Cluster(3, p, "127.0.0.1:1").check().my_shards(8) for p in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert Cluster().my_shards(2) == [0, 1]
    with pytest.raises(UsageError, match="coordinator"):
        Cluster(2, 0, None).check()
    with pytest.raises(UsageError, match="process_id"):
        Cluster(2, 2, "127.0.0.1:1").check()


@pytest.mark.slow
@pytest.mark.parametrize("maps_format", ["npz", "zarr"])
def test_two_processes_equal_the_single_process_result(tmp_path, tiny_weights, maps_format):
    """npz: part files merged by process 0; zarr: each process writes its own shards of the
    store, process 0 marks it complete."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    env = {k: v for k, v in os.environ.items() if k not in ("JAXSAL_WEIGHTS", "DISPLAY")}
    env.update(HOME=str(tmp_path), JAXSAL_HOME=str(tmp_path / "jaxsal"), TORCH_HOME=str(tmp_path / "t"),
               JAX_PLATFORMS="cpu")
    common = [sys.executable, str(TINY_SCRIPT), "-net", "TinyNet", "-weights", str(tiny_weights),
              "-layer", "conv3", "-chn", "6", "14", "-stim", "examples/examples.stim.csv",
              "-save_maps", "-maps_format", maps_format]
    address = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen(common + ["-out", "multi", "-coordinator_address", address,
                                        "-num_processes", "2", "-process_id", str(p)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for p in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    # 7 stimuli = 2 figures: process 0 draws figure 1, process 1 figure 2.
    assert [line for line in outs[0][0].splitlines() if line.startswith("Finish")] == ["Finish: 6/7"]
    assert [line for line in outs[1][0].splitlines() if line.startswith("Finish")] == ["Finish: 7/7"]
    single = subprocess.run(common + ["-out", "single"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    multi_dir, single_dir = tmp_path / "multi", tmp_path / "single"
    maps_name = f"TinyNet_conv3_maps.{maps_format}"
    assert sorted(p.name for p in multi_dir.iterdir()) == sorted(p.name for p in single_dir.iterdir()) == [
        "TinyNet_conv3_fig1.jpg", "TinyNet_conv3_fig2.jpg", maps_name]  # no parts left
    if maps_format == "npz":
        with np.load(multi_dir / maps_name) as a, np.load(single_dir / maps_name) as b:
            assert sorted(a.files) == sorted(b.files)
            arrays = [(key, a[key], b[key]) for key in b.files]
    else:
        import zarr

        a, b = (zarr.open_group(d / maps_name, mode="r") for d in (multi_dir, single_dir))
        layout = ("stimuli_per_shard", "compute")  # 2 shards of 6 and 1 vs 1 of 7
        assert {k: v for k, v in a.attrs.items() if k not in layout} == {
            k: v for k, v in b.attrs.items() if k not in layout}
        assert a.attrs["stimuli_per_shard"] == 6
        assert a.attrs["complete"] is True and a["shards_done"][:].tolist() == [1, 1]
        assert b["shards_done"][:].tolist() == [1]
        arrays = [(key, a[key][:], b[key][:]) for key in ("maps", "activations", "channel",
                                                          "stimulus")]
    for key, multi, single in arrays:
        if key not in ("maps", "activations"):
            np.testing.assert_array_equal(multi, single)
            continue
        # Batches of 6 and 1 vs one of 7: XLA's CPU kernels may round differently per batch shape.
        scale = np.abs(single).max()
        assert scale > 0
        np.testing.assert_allclose(multi, single, rtol=0, atol=1e-6 * scale)
    for fig in ("TinyNet_conv3_fig1.jpg", "TinyNet_conv3_fig2.jpg"):
        assert (multi_dir / fig).read_bytes() == (single_dir / fig).read_bytes()
