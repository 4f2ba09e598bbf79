"""`download` / `jaxsal-convert --download` against a local HTTP server only (never the internet).

Good downloads are of TinyNet's small checkpoint, and of the 244 MB random AlexNet one (`slow`);
the failures need no real checkpoint."""
from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import threading

import numpy as np
import pytest

from jaxsal.errors import UsageError
from jaxsal.models import get_net_spec
from jaxsal.weights import download, load_weights
from jaxsal.weights.command import run

SPEC = get_net_spec("AlexNet")


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802 - http.server's naming
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        kind, payload = route
        if kind == "file":
            self.send_response(200)
            self.send_header("Content-Length", str(payload.stat().st_size))
            self.end_headers()
            with open(payload, "rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)
        elif kind == "bytes":
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        elif kind == "short":  # promise more than is sent, then drop the connection
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload) * 4))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
            self.close_connection = True

    def log_message(self, *args):
        pass


SHORT = "alexnet-owt-1234abcd.pth"


@pytest.fixture(scope="module")
def server():
    """127.0.0.1, ephemeral port, serving a wrong-hash file, a short one and a non-checkpoint;
    `good_checkpoint` adds good checkpoints. Yields (base URL, routes)."""
    junk = os.urandom(4096)
    routes = {
        "/models/alexnet-owt-00000000.pth": ("bytes", junk),  # hash prefix cannot match
        f"/short/{SHORT}": ("short", junk),
        "/models/alexnet-nohash.pth": ("bytes", junk),  # no hash to check, not a checkpoint
    }
    handler = type("Handler", (_Handler,), {"routes": routes})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", routes
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(params=["TinyNet", pytest.param("AlexNet", marks=pytest.mark.slow)])
def good_checkpoint(request, server):
    """(spec, URL, path, state_dict) of a good checkpoint served by `server`: TinyNet's small
    one (tests/conftest.py), or the 244 MB random AlexNet one."""
    if request.param == "TinyNet":
        import tiny_net

        spec = tiny_net.TINY
        src, state = request.getfixturevalue("tiny_torch_checkpoint")
    else:
        spec = SPEC
        src, state = request.getfixturevalue("torchvision_alexnet_checkpoint")
    base, routes = server
    routes[f"/models/{src.name}"] = ("file", src)
    return spec, f"{base}/models/{src.name}", src, state


def all_files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_good_download_converts_into_cache(good_checkpoint, weights_env, capsys):
    spec, url, src, _ = good_checkpoint
    name = f"{spec.name.lower()}.safetensors"
    dst = download(spec, url=url, progress=True)
    assert dst == weights_env.jaxsal_home / name
    assert all_files(weights_env.jaxsal_home) == [name]  # no .pth left behind
    err = capsys.readouterr().err
    size = src.stat().st_size
    assert f"downloading {src.name}" in err and f"{size / 1e6:.1f} MB" in err and "(100%)" in err
    weights = load_weights(spec)  # found automatically
    assert weights.source == str(dst) and weights.missing_stages(spec) == ()
    assert weights.provenance["source_file"] == src.name
    assert weights.provenance["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_cli_download_with_url_from_env(good_checkpoint, weights_env, tmp_path, monkeypatch, capsys):
    spec, url, _, state = good_checkpoint
    monkeypatch.setenv(f"JAXSAL_{spec.name.upper()}_URL", url)  # JAXSAL_ALEXNET_URL, ...
    out = tmp_path / "out" / "full.safetensors"
    net = [] if spec is SPEC else ["--net", spec.name]  # AlexNet is the default
    assert run(["--download", "--quiet", "--dst", str(out), *net]) == 0
    captured = capsys.readouterr()
    assert "downloading" not in captured.err and str(out) in captured.out
    assert all_files(out.parent) == ["full.safetensors"]
    params = load_weights(spec, out).params
    last = spec.params[-2]  # the output layer's kernel: fc3 (classifier.6), fc2 (classifier.3)
    assert last.key.endswith(".kernel") and last.rule == "linear"
    np.testing.assert_array_equal(params[last.key], state[last.torch_key].T)


@pytest.mark.parametrize(
    "path, expect",
    [
        ("/models/alexnet-owt-00000000.pth", "does not start with 00000000"),
        (f"/short/{SHORT}", "interrupted"),
        ("/missing/alexnet-owt-7be5be79.pth", "HTTP 404"),
        ("/models/alexnet-nohash.pth", "not a PyTorch checkpoint"),
    ],
    ids=["wrong-hash", "interrupted", "not-found", "not-a-checkpoint"],
)
def test_failed_download_leaves_nothing(server, weights_env, path, expect):
    base, _ = server
    url = base + path
    with pytest.raises(UsageError) as info:
        download(SPEC, url=url, progress=False)
    assert expect in str(info.value) and "\n" not in str(info.value)
    assert all_files(weights_env.jaxsal_home) == []  # the cache folder may exist, but empty


def test_cli_failed_download_exit_2_and_previous_weights_kept(server, weights_env, capsys):
    base, _ = server
    cache = weights_env.jaxsal_home
    cache.mkdir()
    (cache / "alexnet.safetensors").write_bytes(b"previous")
    assert run(["--download", "--url", f"{base}/models/alexnet-owt-00000000.pth"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("\rdownloading alexnet-owt-00000000.pth: ") and err.count("\n") == 2
    assert err.splitlines()[-1].startswith("jaxsal-convert: error: download of")
    assert all_files(cache) == ["alexnet.safetensors"]
    assert (cache / "alexnet.safetensors").read_bytes() == b"previous"


def test_unreachable_server(weights_env):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UsageError, match="cannot download"):
        download(SPEC, url=f"http://127.0.0.1:{port}/alexnet-owt-7be5be79.pth", progress=False)
    assert all_files(weights_env.jaxsal_home) == []


def test_cli_interrupted_download_message_on_its_own_line(server, weights_env, capsys):
    base, _ = server
    assert run(["--download", "--url", f"{base}/short/{SHORT}"]) == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert last == (
        f"jaxsal-convert: error: download of {base}/short/{SHORT} was interrupted after "
        f"4096 of 16384 bytes; try again"
    )
    assert err.endswith("\n") and err.count("\n") == 2  # progress line, then the error
    assert all_files(weights_env.jaxsal_home) == []
