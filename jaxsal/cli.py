"""dnn_saliency: find the parts of images that drive chosen channels of a CNN layer.

The command of DNNBrain, flag for flag (`../shared/seed/dnn_saliency.md`): flags -> a
`jaxsal.request.Request` -> `jaxsal.pipeline.run`. One table, `FLAGS`, says every flag once;
the absl definitions, the synopsis, the usage text and the request are derived from it.

Start-up order matters for speed: `tune_cpu` first (before anything can import JAX), then the
flags are parsed and validated and the weights read -- all without JAX -- and the pipeline
starts its decoding threads and figure workers before JAX is imported. JAX is never imported at
import time: the figure workers are spawned processes that re-import the entry module.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from typing import Callable, Sequence

from absl import flags

from jaxsal import method_flags, models
from jaxsal.channels import is_channel_token, parse_channels
from jaxsal.errors import UsageError
from jaxsal.reporting import Reporter
from jaxsal.request import Flag, Request
from jaxsal.xla_config import tune_cpu

PROG = "dnn_saliency"
DESCRIPTION = ("Find the saliency parts of an image that contributes to the activation of the "
               "specified channel.")

# Every flag, in the order of the usage text. Defaults are the Request's (or Method's) fields'.
FLAGS: tuple[Flag, ...] = (
    Flag("net", "string", lambda: f"a neural network name: {', '.join(models.names())}", "Net"),
    Flag("layer", "string", "the layer, e.g. 'conv1' (first convolution layer) or 'fc1' (first "
         "fully-connected layer)", "Layer"),
    Flag("chn", "list", "channel numbers (1-based), ranges and 'all': -chn 294 23, --chn=294,23, "
         "-chn 1-64, -chn 1-4 60, -chn all; one figure row each, in the order given (figures "
         "show the first 5; more channels need -save_maps, which saves them all)", "Channel",
         field="channels"),
    Flag("stim", "string", "a .stim.csv file which contains stimulus information", "Stimulus"),
    method_flags.METH,
    Flag("mode", "string", "RGB: visualize derivatives directly; gray: keep the maximal magnitude "
         "of the RGB channels for each pixel and show it as a gray (colour-mapped) image. -cmap, "
         "-vmin and -vmax are only valid in gray mode (and for -meth gradcam, whose maps are 2-D "
         "whatever the mode)", "Mode"),
    Flag("cmap", "string", "colormap for gray-mode saliency images (any matplotlib colormap)",
         "Colormap"),
    Flag("vmin", "float", "minimal value of the colormap, in the 0..255 units of the normalized "
         "map, applied to all saliency images (default: each image's own minimum)", "Vmin"),
    Flag("vmax", "float", "maximal value of the colormap, in the 0..255 units of the normalized "
         "map (default: each image's own maximum)", "Vmax"),
    Flag("show", "boolean", "display stimuli and saliency images in figures"),
    Flag("out", "string", "an output directory where the figures are saved (created if missing)",
         "Output"),
    Flag("weights", "string", "weights file: .safetensors or a torchvision .pth checkpoint "
         "(default: $JAXSAL_WEIGHTS, the jaxsal cache, the torch hub cache, "
         "$DNNBRAIN_DATA/models, then the bundled conv-only weights of AlexNet and Vgg16)",
         "Weights"),
    Flag("save_maps", "boolean", "also save the raw signed maps as OUT/{net}_{layer}_maps.npz "
         "(or .zarr; needs -out)"),
    Flag("maps_format", "string", "npz: one file, written at the end (small runs); zarr: a "
         "chunked Zarr v3 store written shard by shard as the run goes, with the targets' "
         "activations, resumable with -resume", "Format"),
    Flag("maps_reduce", "string", "zarr only: float16 (half the size; each map scaled by a power "
         "of two, kept in maps_scale) and/or gray (max |RGB| per pixel, a third of the size), "
         "e.g. -maps_reduce float16,gray", "Reduction"),
    Flag("resume", "boolean", "continue the zarr store of an interrupted run of the same "
         "command: its saved shards and drawn figures are skipped; a store of another request "
         "is refused"),
    Flag("batch_size", "integer", "at most this many images per batch; larger runs are split into "
         "batches of about equal size (default: chosen from the device's memory)", "N"),
    Flag("precision", "string", "matmul/conv precision: highest (float32, parity with PyTorch), "
         "default (fastest float32 the device offers, e.g. TF32 on GPUs) or bfloat16",
         "Precision"),
    Flag("profile", "boolean", "print where the time went (decode, compute, render, write) on "
         "stderr at the end", of="command", default=False),
    Flag("coordinator_address", "string", "multi-process runs: HOST:PORT of process 0, the same "
         "for every process", "Host:Port"),
    Flag("num_processes", "integer", "multi-process runs: how many processes share the stimuli",
         "N"),
    Flag("process_id", "integer", "multi-process runs: this process's number, "
         "0..num_processes-1", "I"),
    *method_flags.OPTIONS,
    Flag("overlay", "boolean", "draw each map half-transparent over the 224x224 image the "
         "network saw"),
)
BY_NAME = {flag.name: flag for flag in FLAGS}

# The synopsis: one string per line; `a+b+c` = flags given together, in one bracket.
SYNOPSIS_LINES = (
    "net layer chn",
    "stim meth mode cmap",
    "vmin vmax show out",
    "weights save_maps maps_format",
    "maps_reduce resume batch_size",
    "precision profile",
    "smooth noise seed baseline",
    "ig_steps ig_rule cam_layer overlay",
    "coordinator_address+num_processes+process_id",
)

EXAMPLES = f"""\
examples:
  {PROG} -net AlexNet -layer conv5 -chn 60 125 -stim examples/examples.stim.csv -out out
  {PROG} -net AlexNet -layer fc3 -chn 294 23 -stim examples.stim.csv -mode gray -cmap gray -out .
  {PROG} -net AlexNet -layer conv5 -chn 60 -stim examples/examples.stim.csv -meth guided -smooth 16 -out out
  {PROG} -net AlexNet -layer conv5 -chn 60 -stim examples/examples.stim.csv -meth gradcam -cmap jet -overlay -out out
"""

_HELP = {"-h", "--h", "-help", "--help", "-?", "--helpfull", "-helpfull", "--helpshort"}


def define_flags(rows: Sequence[Flag] = FLAGS) -> flags.FlagValues:
    """A command's flags (this one's by default), on a private FlagValues (no global absl
    state)."""
    fv = flags.FlagValues()
    for flag in rows:
        define = getattr(flags, f"DEFINE_{flag.kind}")
        define(flag.name, flag.default_value, flag.help_text, flag_values=fv)
    return fv


def _synopsis_item(item: str, by_name: dict[str, Flag]) -> str:
    names = item.split("+")
    words = " ".join(by_name[name].synopsis() for name in names)
    return words if len(names) == 1 and by_name[names[0]].required else f"[{words}]"


def synopsis(rows: Sequence[Flag] = FLAGS, lines: Sequence[str] = SYNOPSIS_LINES,
             prog: str = PROG, description: str = DESCRIPTION) -> str:
    """The usage line(s) and the description, as the original's argparse lays them out (this
    command's by default; `jaxsal.sanity.command` passes its own)."""
    by_name = {flag.name: flag for flag in rows}
    head = f"usage: {prog} "
    lines = [" ".join(_synopsis_item(item, by_name) for item in line.split()) for line in lines]
    lines[0] = "[-h] " + lines[0]
    body = ("\n" + " " * len(head)).join(lines)
    return f"{head}{body}\n\n{description}\n"


def usage_text(fv: flags.FlagValues | None = None, rows: Sequence[Flag] = FLAGS,
               head: str | None = None, examples: str = EXAMPLES) -> str:
    """-help: the synopsis (`head`), every flag with its help and default, the examples."""
    fv = define_flags(rows) if fv is None else fv
    lines = [synopsis() if head is None else head, "arguments:"]
    for flag in rows:
        default = fv[flag.name].default
        req = " (required)" if flag.required else ""
        shown = "" if default is None or isinstance(default, bool) else f" [default: {default}]"
        lines.append(f"  -{flag.name}{req}: {fv[flag.name].help}{shown}")
    return "\n".join(lines) + "\n\n" + examples


def join_channel_values(argv: Sequence[str]) -> list[str]:
    """Turn `-chn 294 23` (argparse style, as the seed documents) into `--chn=294,23`.

    Every word after -chn/--chn up to the next flag belongs to it (`jaxsal.channels`: numbers,
    ranges, 'all'; a negative number too, so that `-chn -1` reaches the range check), so that a
    bad word is named by the channel parser instead of being taken for a stray argument.
    """
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-chn", "--chn"):
            values = []
            i += 1
            while i < len(argv) and is_channel_token(argv[i]):
                values.append(argv[i])
                i += 1
            if not values:
                raise UsageError("-chn needs at least one channel number, e.g. -chn 294 23")
            out.append("--chn=" + ",".join(values))
            continue
        out.append(arg)
        i += 1
    return out


class _Help(Exception):
    """-help was asked for: print the text and exit 0."""


EXAMPLE_ARGS = "-net AlexNet -layer conv5 -chn 60 125 -stim examples.stim.csv -out out"


def parse_flags(argv: Sequence[str], rows: Sequence[Flag] = FLAGS, prog: str = PROG,
                usage=usage_text, example: str = EXAMPLE_ARGS) -> flags.FlagValues:
    """argv -> parsed flags: -help, unknown flags, bad values, stray arguments, missing flags.
    This command's flags by default; another command of the family passes its `rows`, `prog`,
    `usage(fv)` and an `example` of its arguments."""
    fv = define_flags(rows)
    args = list(argv[1:])
    if any(a in _HELP for a in args):
        raise _Help(usage(fv))
    try:
        rest = fv([prog] + join_channel_values(args))
    except flags.Error as e:
        raise UsageError(f"{e} (see {prog} -help)") from None
    if len(rest) > 1:
        raise UsageError(f"unexpected argument(s): {' '.join(rest[1:])} (see {prog} -help)")
    missing = [f"-{flag.name}" for flag in rows if flag.required and fv[flag.name].value is None]
    if missing:
        raise UsageError(f"missing required flag(s): {', '.join(missing)}; e.g. {prog} {example}")
    return fv


def request_from_flags(fv: flags.FlagValues) -> Request:
    """Parsed flags -> Request (which checks what needs no file and no JAX)."""
    values = {flag.target: fv[flag.name].value for flag in FLAGS if flag.of == "request"}
    channels = parse_channels(values["channels"], "-chn")
    given = {flag.name for flag in method_flags.FLAGS if fv[flag.name].present}
    method = method_flags.method_from_flags(
        {flag.name: fv[flag.name].value for flag in method_flags.FLAGS}, given)
    return Request(**{**values, "channels": channels, "method": method})


def parse_args(argv: Sequence[str]) -> Request:
    """Flags -> Request. Checks only what needs no file, no registry and no JAX."""
    return request_from_flags(parse_flags(argv))


class Terminated(BaseException):
    """SIGTERM: raised in the main thread like KeyboardInterrupt for SIGINT, so that a
    terminated run unwinds the same way -- figures being drawn are finished, the workers shut
    down, nothing half-written is left -- and exits with status 143 (128 + SIGTERM)."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM raises `Terminated` while the command runs (main thread only; the previous
    handler is restored after, for callers of `main` in a longer-lived process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _warnings_to(reporter: Reporter):
    """Python warnings raised during the run (jaxsal's own, e.g. about weights, or a library's)
    become the command's one-line `dnn_saliency: warning: ...`."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *args, **kwargs: reporter.warn(str(message))
        yield


def exit_status(reporter: Reporter, body: Callable[[], None]) -> int:
    """Run a command's `body` (this one's, or another of the family's: dnn_saliency_check) with
    SIGTERM unwinding and warnings as the reporter's lines; its exit status: 0 ok, 2
    usage/input/output error (one line), 1 unexpected (our bug: the traceback), 130 interrupted
    (SIGINT), 143 terminated (SIGTERM). -help prints the usage, status 0."""
    with _sigterm_unwinds(), _warnings_to(reporter):
        try:
            body()
        except _Help as h:
            print(str(h), end="")
            return 0
        except UsageError as e:
            reporter.error(str(e))
            return 2
        except KeyboardInterrupt:
            reporter.end_live()
            reporter.info("interrupted")
            return 130
        except Terminated:
            reporter.end_live()
            reporter.info("terminated")
            return 143
        except Exception:  # noqa: BLE001 - anything else is our bug: say so, with the traceback
            reporter.end_live()
            traceback.print_exc()
            reporter.info("internal error (this is a bug in jaxsal, not in your input); please "
                          "report it with the traceback above")
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (`exit_status`)."""
    argv = list(sys.argv if argv is None else argv)
    tune_cpu()  # before anything can import JAX (the figure workers never do)
    start = time.perf_counter()
    reporter = Reporter(PROG)

    def body():
        global _MULTI_PROCESS
        fv = parse_flags(argv)
        request = request_from_flags(fv)
        _MULTI_PROCESS = request.cluster.is_multi
        # The run's modules (numpy, Pillow; JAX later): only once the flags are sound, so that
        # -help and a mistyped flag answer at once.
        from jaxsal import pipeline, stimuli

        stimuli.use_own_pixel_limit()
        report = pipeline.run(request, compilation_cache=True, started=start, reporter=reporter)
        if fv.profile:
            print(report.timings.report(PROG), file=sys.stderr)

    return exit_status(reporter, body)


def exit_now(rc: int) -> None:
    """End the process with status `rc` once stdout and stderr are flushed, skipping the
    interpreter's teardown (JAX's is slow, BENCHMARKS.md, and a finished run needs nothing of
    it). For single-process runs only: jax.distributed shuts down at a normal exit."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(rc)


def run() -> int:
    """Console-script entry point: `main`, then `exit_now` unless the run was multi-process."""
    rc = main(sys.argv)
    if not _MULTI_PROCESS:
        exit_now(rc)
    return rc


_MULTI_PROCESS = False  # set by main() when this run joins a jax.distributed cluster


if __name__ == "__main__":
    sys.exit(run())
