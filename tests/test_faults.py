"""Run-time faults of the command (TinyNet, real figure workers): an output that cannot be
written is one line and exit 2; SIGTERM is as clean as SIGINT (exit 143); after SIGKILL of the
main process no worker or resource tracker is left; figure jobs in flight are bounded (memory
does not grow with the run). Processes are found by a tag in their environment, which every
descendant inherits, so orphans are found too."""
from __future__ import annotations

import concurrent.futures
import os
import pathlib
import resource
import signal
import subprocess
import sys
import time
import types
import uuid

import pytest

from jaxsal import pipeline, render
from jaxsal.render import pool

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TINY_SCRIPT = pathlib.Path(__file__).with_name("tiny_net.py")
FILE_SIZE_LIMIT = 20_000  # bytes: less than any TinyNet figure


# ---------------------------------------------------------------------------------------------
# Back-pressure


class HeldFuture(concurrent.futures.Future):
    """A figure job that is done only once the sink waits for it."""

    def __init__(self, pool):
        super().__init__()
        self.pool = pool

    def result(self, timeout=None):
        if not super().done():
            self.pool.in_flight -= 1
            self.set_result(("figure.jpg", 0.0))
        return super().result()


class HeldPool:
    def __init__(self):
        self.in_flight = self.most = 0

    def submit(self, fn, *args):
        if fn is not render.render_job:  # warm-up
            future = concurrent.futures.Future()
            future.set_result(None)
            return future
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        return HeldFuture(self)

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def test_figure_jobs_in_flight_are_bounded(monkeypatch, capsys):
    """Maps come faster than figures are drawn: submit waits instead of piling jobs up."""
    held = HeldPool()
    monkeypatch.setattr(render, "render_pool", lambda workers: held)
    monkeypatch.setattr(render, "default_render_workers", lambda: 3)
    figures = [(k + 1, range(6 * k, 6 * k + 6)) for k in range(40)]
    plan = types.SimpleNamespace(out=pathlib.Path("out"), show=False, channels0=(0,),
                                 figure_channels=(1,),
                                 stimuli=types.SimpleNamespace(paths=[None] * 240))
    sink = pipeline.FigureSink(plan, figures, pipeline.Reporter())
    for _, cols in figures:
        sink.submit(cols, job=None)
        assert held.in_flight <= 2 * 3
    sink.finish(block=True)
    assert held.most == 2 * 3 and held.in_flight == 0
    assert capsys.readouterr().out.splitlines() == [f"Finish: {6 * k}/240" for k in range(1, 41)]


# ---------------------------------------------------------------------------------------------
# A figure that cannot be written


def _worker_init_small_files(parent: int) -> None:
    """The figure workers' initializer, with files limited to FILE_SIZE_LIMIT bytes: writing a
    figure fails as on a full disk (EFBIG instead of ENOSPC; the same path)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the worker
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    pool._worker_init(parent)


def test_a_figure_that_cannot_be_written_is_one_line_exit_2(tmp_path, dnn_saliency, tiny_weights,
                                                             monkeypatch):
    def small_files_pool(workers):
        return concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=pool.multiprocessing.get_context("spawn"),
            initializer=_worker_init_small_files, initargs=(os.getpid(),))

    monkeypatch.setattr(render, "render_pool", small_files_pool)
    monkeypatch.setattr(render, "default_render_workers", lambda: 1)
    out = tmp_path / "out"
    done = dnn_saliency(["-net", "TinyNet", "-layer", "conv3", "-chn", "2", "-stim",
                         EXAMPLES / "examples.stim.csv", "-weights", tiny_weights, "-out", out],
                        cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"dnn_saliency: error: cannot write {out / 'TinyNet_conv3_fig1.jpg'}: "
                           f"{os.strerror(27)}\n")  # EFBIG
    assert done.stdout == ""
    assert os.listdir(out) == []  # no temporary file, nothing half-written


# ---------------------------------------------------------------------------------------------
# Signals (slow: real runs of the command in subprocesses)


def tagged_processes(tag: str) -> list[int]:
    """Processes whose environment holds JAXSAL_TEST_TAG=tag (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if f"JAXSAL_TEST_TAG={tag}".encode() in environ and state != b"Z":
            found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def long_stim(tmp_path_factory):
    """700 stimuli (the 7 examples, 100 times): a run that lasts well after its first figure."""
    folder = tmp_path_factory.mktemp("long")
    lines = (EXAMPLES / "examples.stim.csv").read_text().splitlines()
    header = [line for line in lines if "=" in line]
    rows = [line for line in lines if "=" not in line and line.strip()]
    header = [f"path={EXAMPLES}" if line.startswith("path=") else line for line in header]
    stim = folder / "long.stim.csv"
    stim.write_text("\n".join(header + rows * 100) + "\n")
    return stim


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGKILL, -signal.SIGKILL)])
def test_a_run_stopped_by_a_signal_leaves_no_process_and_no_hidden_file(
        tmp_path, tiny_weights, long_stim, signum, status):
    tag = uuid.uuid4().hex
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(JAXSAL_TEST_TAG=tag, JAXSAL_HOME=str(tmp_path / "home"), MPLBACKEND="Agg")
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        run = subprocess.Popen([sys.executable, str(TINY_SCRIPT), "-net", "TinyNet", "-layer",
                                "conv3", "-chn", "2", "-stim", str(long_stim), "-weights",
                                str(tiny_weights), "-out", str(out)],
                               env=env, stdout=stdout, stderr=stderr)
        try:
            deadline = time.monotonic() + 120
            while not (out.is_dir() and any(out.glob("*.jpg"))):  # mid-run: figures being drawn
                assert run.poll() is None and time.monotonic() < deadline, "no figure came"
                time.sleep(0.05)
            assert len(tagged_processes(tag)) >= 3  # main, figure workers, resource tracker
            run.send_signal(signum)
            assert run.wait(timeout=60) == status
            deadline = time.monotonic() + 5
            while tagged_processes(tag) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert tagged_processes(tag) == [], "processes left after the run was stopped"
        finally:
            for pid in tagged_processes(tag):  # don't leave them to the next test
                os.kill(pid, signal.SIGKILL)
    figures = os.listdir(out)
    assert figures and all(not name.startswith(".") for name in figures), figures
    assert len(figures) < 117  # it was stopped mid-run
    if signum == signal.SIGTERM:
        assert (tmp_path / "stderr").read_text() == "dnn_saliency: terminated\n"
