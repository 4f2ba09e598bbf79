"""dnn_saliency_check: can the maps of a unit be trusted? Sanity checks and faithfulness scores.

The inputs are those of a saliency run, spelled by the same rows of the flag table
(`jaxsal.cli.BY_NAME`, `jaxsal.method_flags`), parsed and validated by the same code; -meth
takes a comma-separated list. Its own flags choose the tests and their settings. Flags ->
`jaxsal.sanity.CheckRequest` -> `jaxsal.sanity.api.run_check`; the summary goes to stdout, the
run's lines to stderr, the table and the figures to -out.
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

from jaxsal import cli, method_flags
from jaxsal.channels import parse_channels
from jaxsal.reporting import Reporter
from jaxsal.request import Flag
from jaxsal.sanity import plan as plans
from jaxsal.xla_config import tune_cpu

PROG = "dnn_saliency_check"
DESCRIPTION = ("Sanity checks of the saliency maps of CNN channels: how much the maps change when "
               "the network's weights are randomised layer by layer (model-parameter "
               "randomisation, cascading and independent), and how fast the channel falls or "
               "rises as the most salient pixels are removed or inserted (deletion, insertion), "
               "against a random pixel order.")

METHODS = Flag("meth", "string", "the methods to compare, comma-separated, e.g. "
               "vanilla,guided,ig (any of dnn_saliency's -meth values; their option flags below "
               "apply to the methods that use them)", "Methods", of="command",
               default=",".join(plans.DEFAULT_METHODS))
OWN = (
    Flag("tests", "string", "the tests, comma-separated: mprt_cascading, mprt_independent, "
         "deletion, insertion", "Tests", of="command", default=",".join(plans.TESTS)),
    Flag("steps", "integer", "steps of the deletion and insertion curves; each removes (or "
         "inserts) 1/steps of the pixels", "N", of="command", default=plans.DEFAULT_STEPS),
    Flag("fill", "string", "the curves' baseline image: blur (the image blurred) or mean (the "
         "dataset's mean colour)", "Fill", of="command", default="blur"),
    Flag("topk", "float", "topk_overlap compares this percentage of the most salient pixels",
         "Percent", of="command", default=plans.DEFAULT_TOPK),
    Flag("rand_layers", "string", "the layers to randomise, comma-separated (default: every "
         "layer with parameters at or below -layer, top-down)", "Layers", of="command"),
    Flag("rand_seed", "integer", "seed of the re-initialised weights and of the random pixel "
         "order, 0..2^32-1", "Seed", of="command", default=0),
)
SHARED = ("net", "layer", "chn", "stim", "weights", "batch_size", "precision", "out")
FLAGS: tuple[Flag, ...] = (*(cli.BY_NAME[name] for name in SHARED[:4]), METHODS,
                           *method_flags.OPTIONS, *OWN,
                           *(cli.BY_NAME[name] for name in SHARED[4:]))

SYNOPSIS_LINES = (
    "net layer chn",
    "stim meth tests steps",
    "fill topk rand_layers rand_seed",
    "weights batch_size precision out",
    "smooth noise seed baseline",
    "ig_steps ig_rule cam_layer",
)
EXAMPLE_ARGS = "-net AlexNet -layer conv5 -chn 60 125 -stim examples.stim.csv -out check"
EXAMPLES = f"""\
examples:
  {PROG} -net AlexNet -layer conv5 -chn 60 125 -stim examples/examples.stim.csv -out check
  {PROG} -net AlexNet -layer conv5 -chn 60 -stim examples/examples.stim.csv -meth vanilla,guided,ig -ig_steps 16 -tests mprt_cascading -out check
  {PROG} -net AlexNet -layer conv5 -chn 60 -stim examples/examples.stim.csv -tests deletion,insertion -steps 50 -fill mean -out check
"""


def usage(fv=None) -> str:
    head = cli.synopsis(FLAGS, SYNOPSIS_LINES, PROG, DESCRIPTION)
    return cli.usage_text(fv, FLAGS, head, EXAMPLES)


def request_from_flags(fv) -> plans.CheckRequest:
    """Parsed flags -> CheckRequest (which checks what needs no file and no JAX)."""
    given = {flag.name for flag in method_flags.OPTIONS if fv[flag.name].present}
    names = [name.strip() for name in fv.meth.split(",")]
    methods = method_flags.methods_from_flags(
        names, {flag.name: fv[flag.name].value for flag in method_flags.OPTIONS}, given)
    return plans.CheckRequest(
        net=fv.net, layer=fv.layer, channels=parse_channels(fv.chn, "-chn"), stim=fv.stim,
        methods=methods, tests=fv.tests, steps=fv.steps, fill=fv.fill, topk=fv.topk,
        rand_layers=fv.rand_layers, rand_seed=fv.rand_seed, weights=fv.weights,
        batch_size=fv.batch_size, precision=fv.precision, out=fv.out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (`jaxsal.cli.exit_status`)."""
    argv = list(sys.argv if argv is None else argv)
    tune_cpu()  # before anything can import JAX
    start = time.perf_counter()
    reporter = Reporter(PROG)

    def body():
        request = request_from_flags(cli.parse_flags(argv, FLAGS, PROG, usage, EXAMPLE_ARGS))
        from jaxsal.sanity.api import run_check
        from jaxsal.sanity.frame import report_lines
        from jaxsal.stimuli import use_own_pixel_limit  # Pillow: only once the flags are sound

        use_own_pixel_limit()
        report = run_check(request, reporter)
        print("\n".join(report_lines(report.frame)), file=reporter.stdout, flush=True)
        reporter.info(f"done in {time.perf_counter() - start:.1f}s")

    return cli.exit_status(reporter, body)


def run() -> int:
    """Console-script entry point."""
    cli.exit_now(main(sys.argv))


if __name__ == "__main__":
    sys.exit(run())
