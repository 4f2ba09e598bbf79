"""The networks beyond AlexNet from the user's side: each mistake is one line, exit 2, before any
compute; checkpoints of another network are named; downloads of any network (local HTTP server
only); every method on the block networks; Grad-CAM's default layer per network."""
from __future__ import annotations

import hashlib
import http.server
import pathlib
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from jaxsal.methods import resolve
from jaxsal.models import get_net_spec, zoo

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = pathlib.Path(sys.executable).with_name("dnn_saliency")
CONVERT = pathlib.Path(sys.executable).with_name("jaxsal-convert")


@pytest.fixture
def env(weights_env, monkeypatch, tmp_path):
    """Isolated caches (weights_env) for subprocesses too; a copy of the examples."""
    import os

    shutil.copytree(REPO / "examples", tmp_path / "examples")
    return {k: v for k, v in os.environ.items() if k != "DISPLAY"} | {"MPLBACKEND": "Agg"}


def run(args, cwd, env, program=SCRIPT):
    return subprocess.run([str(program), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def one_line_error(done, *fragments):
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def googlenet_checkpoint(tmp_path_factory):
    """A random Googlenet checkpoint written by torch.save, named with its own sha256 prefix."""
    torch = pytest.importorskip("torch")
    import torch_nets

    folder = tmp_path_factory.mktemp("googlenet")
    tmp = folder / "partial.pth"
    torch.save(torch_nets.random_state_dict("Googlenet", seed=2), tmp)
    path = folder / f"googlenet-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(path)
    return path


STIM = ["-stim", "examples/examples.stim.csv", "-out", "out"]


def test_unknown_network_lists_them_all(env, tmp_path):
    line = one_line_error(run(["-net", "resnet50", "-layer", "fc", "-chn", "1", *STIM], tmp_path, env),
                          "unknown network 'resnet50'")
    assert all(spec.name in line for spec in zoo.NETWORKS)  # the built-in ones
    assert not (tmp_path / "out").exists()


def test_layers_and_channels_are_checked_per_network(env, tmp_path):
    line = one_line_error(run(["-net", "Resnet50", "-layer", "layer5_bottleneck0", "-chn", "1", *STIM],
                              tmp_path, env), "unknown layer 'layer5_bottleneck0' for Resnet50")
    assert "layer4_bottleneck2, avgpool, fc" in line
    one_line_error(run(["-net", "InceptionV3", "-layer", "inception11", "-chn", "2049", *STIM], tmp_path, env),
                   "2049", "which has 2048 channels")


def test_missing_weights_name_the_fix(env, tmp_path):
    one_line_error(run(["-net", "Vgg16", "-layer", "fc3", "-chn", "1", *STIM], tmp_path, env),
                   "layer 'fc3' of Vgg16 needs the weights of fc1, fc2, fc3",
                   "jaxsal-convert --download --net Vgg16", "vgg16-397923af.pth")
    one_line_error(run(["-net", "Vgg11", "-layer", "conv1", "-chn", "1", *STIM], tmp_path, env),
                   "no weights found for Vgg11", "jaxsal-convert --download --net Vgg11")
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_another_network_is_refused(env, tmp_path, googlenet_checkpoint):
    one_line_error(run(["-net", "Resnet50", "-layer", "fc", "-chn", "1", "-weights",
                        str(googlenet_checkpoint), *STIM], tmp_path, env),
                   "holds Googlenet weights, not Resnet50")


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict = {}

    def do_GET(self):  # noqa: N802
        path = self.files.get(self.path)
        if path is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()
        with open(path, "rb") as f:
            shutil.copyfileobj(f, self.wfile)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve(tmp_path):
    """Serve files on 127.0.0.1 (ephemeral port): serve(name -> path) returns the base URL."""
    handler = type("Files", (_Files,), {"files": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def add(name, path):
        handler.files[f"/models/{name}"] = path
        return f"http://127.0.0.1:{httpd.server_address[1]}/models/{name}"

    yield add
    httpd.shutdown()
    httpd.server_close()


def test_download_of_another_network(env, tmp_path, weights_env, googlenet_checkpoint, serve):
    url = serve(googlenet_checkpoint.name, googlenet_checkpoint)
    done = run(["--download", "Googlenet", "--quiet"], tmp_path, env | {"JAXSAL_GOOGLENET_URL": url},
               program=CONVERT)
    assert done.returncode == 0, done.stderr
    cached = weights_env.jaxsal_home / "googlenet.safetensors"
    assert str(cached) in done.stdout
    from jaxsal.weights import load_weights

    weights = load_weights(get_net_spec("Googlenet"))
    assert weights.source == str(cached) and not weights.missing_stages(get_net_spec("Googlenet"))
    assert weights.provenance["source_sha256"] == hashlib.sha256(googlenet_checkpoint.read_bytes()).hexdigest()


def test_download_without_published_hash_prints_it(env, tmp_path, googlenet_checkpoint, serve):
    """vgg_face_dag.pth has no hash in its name: its sha256 is printed. (This one holds Googlenet
    weights, which the converter then names.)"""
    url = serve("vgg_face_dag.pth", googlenet_checkpoint)
    done = run(["--download", "VggFace", "--quiet"], tmp_path, env | {"JAXSAL_VGGFACE_URL": url},
               program=CONVERT)
    sha = hashlib.sha256(googlenet_checkpoint.read_bytes()).hexdigest()
    assert f"vgg_face_dag.pth has no published sha256 to check; its sha256 is {sha}" in done.stderr
    assert done.returncode == 2 and "holds Googlenet weights, not VggFace" in done.stderr


@pytest.mark.parametrize("name,layer,cam", [
    ("AlexNet", "fc3", "conv5_maxpool"), ("AlexNet", "conv2", "conv2"),
    ("Vgg16", "fc3", "conv13_maxpool"), ("Vgg19_bn", "fc1_relu", "conv16_maxpool"),
    ("VggFace", "fc8", "pool5"), ("Googlenet", "fc", "inception5b"),
    ("InceptionV3", "fc", "inception11"), ("InceptionV3", "inception4", "inception4"),
    ("Resnet50", "avgpool", "layer4_bottleneck2"), ("Resnet152", "fc", "layer4_bottleneck2"),
    # beyond the original's networks (issue 18)
    ("Resnet18", "fc", "layer4_basicblock1"), ("Resnet34", "avgpool", "layer4_basicblock2"),
    ("Resnet34", "layer2_basicblock0", "layer2_basicblock0"), ("Densenet121", "fc", "norm5"),
    ("Densenet121", "transition2", "transition2"),
])
def test_default_grad_cam_layer(name, layer, cam):
    assert resolve("gradcam", get_net_spec(name), layer).cam_layer == cam


@pytest.mark.slow
@pytest.mark.parametrize("name,layer", [("Resnet50", "layer2_bottleneck1"), ("Googlenet", "inception3b"),
                                        # beyond the original's networks (issue 18)
                                        ("Resnet18", "layer1_basicblock1"), ("Resnet34", "layer1_basicblock0"),
                                        ("Densenet121", "denseblock1")])
def test_every_method_on_block_networks(name, layer):
    """Every method of docs/methods.md runs on residual, inception and dense blocks (64 x 64
    input); none is refused on these ReLU networks."""
    import dataclasses

    from jaxsal.core import compiled_saliency
    from jaxsal.methods import METHODS, Method, map_shape
    from jaxsal.net import nest_params
    from test_zoo import noise_inputs, state_dict
    from jaxsal.weights.conversion import from_torchvision

    full = get_net_spec(name)
    spec = dataclasses.replace(full, preprocessing=dataclasses.replace(full.preprocessing, size=64))
    params = nest_params(from_torchvision(full, state_dict(name)))
    x = noise_inputs(spec, n=2)
    methods = [Method(m) for m in METHODS] + [Method("guided", smooth=2), Method("ig", ig_steps=2)]
    for method in methods:
        maps = np.asarray(compiled_saliency(spec, layer, method, "highest")(params, x, np.array([0, 5])))
        assert maps.shape == map_shape(method, 2, 2, 64), method
        assert np.all(np.isfinite(maps)) and np.all(np.abs(maps).sum(axis=tuple(range(2, maps.ndim))) > 0), method
        if method.info.maps_2d:
            assert maps.min() >= 0


# -- Beyond the original's networks (issue 18) ------------------------------------------------


@pytest.fixture(scope="module")
def published_densenet_checkpoint(tmp_path_factory):
    """A Densenet121 checkpoint written by torch.save under the published file's older key names
    (`denselayer1.norm.1.weight`, no batch-norm counters), named with its own sha256 prefix; and
    the params its today's-names state_dict converts to. Each tensor is filled with its own
    index (a key read as another's shows; no random numbers to draw)."""
    torch = pytest.importorskip("torch")
    import torch_nets

    from jaxsal.weights.conversion import from_torchvision

    state = {k: torch.full(shape, float(i), dtype=dtype)
             for i, (k, (shape, dtype)) in enumerate(torch_nets.state_dict_shapes("Densenet121").items())
             if not k.endswith("num_batches_tracked")}
    published = {torch_nets.densenet_published_key(k): v for k, v in state.items()}
    folder = tmp_path_factory.mktemp("densenet")
    tmp = folder / "partial.pth"
    torch.save(published, tmp)
    path = folder / f"densenet121-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(path)
    expected = from_torchvision(get_net_spec("Densenet121"), {k: v.numpy() for k, v in state.items()})
    return path, expected


def test_download_converts_a_published_densenet(env, tmp_path, weights_env, published_densenet_checkpoint,
                                                serve):
    """`jaxsal-convert --download --net Densenet121`: the description's WeightSource is all it
    needs (its URL, overridden here by $JAXSAL_DENSENET121_URL to a local server; its key rename)."""
    from jaxsal.weights import load_weights

    checkpoint, expected = published_densenet_checkpoint
    url = serve(checkpoint.name, checkpoint)
    done = run(["--download", "--net", "Densenet121", "--quiet"], tmp_path,
               env | {"JAXSAL_DENSENET121_URL": url}, program=CONVERT)
    assert done.returncode == 0, done.stderr
    cached = weights_env.jaxsal_home / "densenet121.safetensors"
    assert str(cached) in done.stdout
    weights = load_weights(get_net_spec("Densenet121"))
    assert weights.source == str(cached) and not weights.missing_stages(get_net_spec("Densenet121"))
    assert weights.provenance["source_file"] == checkpoint.name
    assert weights.params.keys() == expected.keys()
    assert all(np.array_equal(weights.params[k], expected[k]) for k in expected)
