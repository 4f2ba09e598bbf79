"""`jaxsal.check(...)` and `run_check(request)`: a sanity check from inputs to table and files."""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import pandas as pd

from jaxsal.errors import OutputError
from jaxsal.methods import Method
from jaxsal.reporting import Reporter
from jaxsal.sanity import plan as plans
from jaxsal.sanity.plan import CheckPlan, CheckRequest, validate


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """A finished check: its table (`jaxsal.sanity.frame`), the files written (figures, then
    the CSV), and the validated plan."""

    frame: pd.DataFrame
    files: tuple[pathlib.Path, ...]
    plan: CheckPlan


def _title(plan: CheckPlan) -> str:
    r = plan.run
    return f"{r.net} {r.layer} channel {r.channels[0]}, {r.stimuli.ids[0]}"


def write_outputs(plan: CheckPlan, results, frame: pd.DataFrame,
                  reporter: Reporter) -> tuple[pathlib.Path, ...]:
    """Figures, then the CSV last, each written whole or not at all; if one cannot be written,
    the ones this call wrote are removed (OutputError)."""
    from jaxsal.render import save_jpeg
    from jaxsal.sanity import figures
    from jaxsal.sanity.frame import write_csv

    r = plan.run
    jobs = []
    if results.grid:
        jobs.append(("grid", lambda: figures.grid_figure(
            results.grid, results.picture, r.spec.preprocessing, results.stages,
            f"cascading randomisation: {_title(plan)}")))
    if plan.mprt_modes:
        jobs.append(("similarity", lambda: figures.similarity_figure(
            frame, f"{r.net} {r.layer}: similarity to the trained maps")))
    if plan.curve_tests:
        jobs.append(("curves", lambda: figures.curves_figure(
            frame, f"{r.net} {r.layer}: the unit as pixels are removed / inserted "
                   f"({plan.fill} baseline)")))
    written: list[pathlib.Path] = []
    try:
        r.out.mkdir(parents=True, exist_ok=True)
        for what, make in jobs:
            written.append(save_jpeg(make(), plan.path(what)))
        write_csv(frame, plan.path("csv"))
        written.append(plan.path("csv"))
    except OSError as e:
        for path in written:
            path.unlink(missing_ok=True)
        raise OutputError(f"cannot write into {r.out}: {e.strerror or e}") from None
    for path in written:
        reporter.info(f"wrote {path}")
    return tuple(written)


def run_check(request: CheckRequest | CheckPlan, reporter: Reporter | None = None) -> CheckReport:
    """Validate (everything, before any compute), compute every test, write the files if the
    plan has an output folder. `reporter`: where the run's lines go (default `jaxsal: ...` on
    stderr)."""
    from jaxsal.pipeline import load_net
    from jaxsal.sanity import engine
    from jaxsal.sanity.frame import table

    reporter = reporter or Reporter()
    plan = request if isinstance(request, CheckPlan) else validate(request)
    r = plan.run
    if plan.above and plan.mprt_modes:
        reporter.info(f"{', '.join(plan.above)} {'is' if len(plan.above) == 1 else 'are'} above "
                      f"{r.layer}: randomising them cannot change its maps, so they are skipped")
    net = load_net(r)
    results = engine.run(plan, net, reporter)
    frame = table(results, plan)
    files = write_outputs(plan, results, frame, reporter) if r.out is not None else ()
    return CheckReport(frame=frame, files=files, plan=plan)


def check(net: str, layer: str, channels: Sequence[int], stim, methods=plans.DEFAULT_METHODS,
          *, tests=plans.TESTS, steps: int = plans.DEFAULT_STEPS, fill: str = "blur",
          topk: float = plans.DEFAULT_TOPK, rand_layers=None, rand_seed: int = 0, weights=None,
          batch_size: int | None = None, precision: str = "highest", out=None,
          reporter: Reporter | None = None) -> pd.DataFrame:
    """Sanity checks of the maps of `channels` (1-based) of `layer` on the stimuli of `stim` (a
    .stim.csv file), for each of `methods` (names or `jaxsal.methods.Method`s), as the command
    dnn_saliency_check:

        df = jaxsal.check("AlexNet", "conv5", [60, 125], "examples/examples.stim.csv",
                          methods=["vanilla", "guided"])
        df.query("test == 'mprt_cascading' and metric == 'spearman_abs'")

    Returns the tidy table (`jaxsal.sanity.frame`: test, method, channel, stim_id, step,
    metric, value). tests: any of mprt_cascading, mprt_independent, deletion, insertion.
    steps, fill, topk, rand_layers, rand_seed: see `jaxsal.sanity.CheckRequest`. out: also
    write `{net}_{layer}_check.csv` and the figures there. Every input is checked before any
    compute (`jaxsal.UsageError`).
    """
    if isinstance(methods, Method):
        methods = [methods]
    request = CheckRequest(net=net, layer=layer, channels=channels, stim=stim, methods=methods,
                           tests=tests, steps=steps, fill=fill, topk=topk,
                           rand_layers=rand_layers, rand_seed=rand_seed, weights=weights,
                           batch_size=batch_size, precision=precision, out=out)
    return run_check(request, reporter).frame
