"""A check's results as one tidy table, its summary, and the CSV file.

One row per measured number, the columns `COLUMNS`:

    test     mprt_cascading, mprt_independent, deletion or insertion
    method   the method (vanilla, guided, ...); `random` for the random pixel order of the curves
    channel  1-based channel (unit) number, as given
    stim_id  the stimulus's stimID
    step     the randomised layer (MPRT: in the cascading test, that layer and every layer above
             it, down from the target, are randomised), or the fraction of pixels removed or
             inserted (curves: t / steps); empty (None) for `auc`, which sums up a whole curve
    metric   spearman_abs, spearman, ssim, topk_overlap (MPRT, `similarity.SIMILARITIES`);
             activation (the unit's value at that step), normalised (the normalised curve) and
             auc (its area) (curves, `jaxsal.sanity.curves`)
    value    float; NaN where the measure is undefined (a constant map; a unit that does not
             tell the image from the baseline)
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from jaxsal.atomic import atomic_path
from jaxsal.sanity import curves
from jaxsal.sanity.engine import Results
from jaxsal.sanity.plan import CheckPlan
from jaxsal.sanity.similarity import SIMILARITIES

COLUMNS = ("test", "method", "channel", "stim_id", "step", "metric", "value")
SUMMARY_KEYS = ["test", "method", "channel", "step", "metric"]


def _rows(test: str, method: str, values: np.ndarray, channels, stim_ids, steps, metrics) -> dict:
    """Columns for values (K channels, N stimuli, len(steps), len(metrics)), channel-major."""
    shape = values.shape
    grid = np.indices(shape).reshape(4, -1)
    return {
        "test": np.full(values.size, test, object),
        "method": np.full(values.size, method, object),
        "channel": np.asarray(channels, np.int64)[grid[0]],
        "stim_id": np.asarray(stim_ids, object)[grid[1]],
        "step": np.asarray(list(steps) if steps else [None], object)[grid[2]],
        "metric": np.asarray(metrics, object)[grid[3]],
        "value": values.reshape(-1).astype(np.float64),
    }


def table(results: Results, plan: CheckPlan) -> pd.DataFrame:
    """The tidy table of `results` (see the module docstring), tests in `TESTS` order."""
    channels, ids = plan.run.channels, plan.run.stimuli.ids
    parts = []
    for (mode, method), sims in results.similarity.items():  # (L, K, N, M)
        parts.append(_rows(f"mprt_{mode}", method, sims.transpose(1, 2, 0, 3), channels, ids,
                           results.stages, SIMILARITIES))
    fractions = [float(f) for f in results.fractions]
    for (test, method), raw in results.curves.items():  # (T, K, N)
        raw = raw.transpose(1, 2, 0)  # (K, N, T)
        normalised = curves.normalise(raw, insert=test == "insertion")
        parts.append(_rows(test, method, np.stack([raw, normalised], axis=-1), channels, ids,
                           fractions, ("activation", "normalised")))
        auc = curves.area(normalised, results.fractions)[..., None, None]
        parts.append(_rows(test, method, auc, channels, ids, None, ("auc",)))
    if not parts:
        return pd.DataFrame({c: [] for c in COLUMNS})
    return pd.DataFrame({c: np.concatenate([p[c] for p in parts]) for c in COLUMNS})


def summary(frame: pd.DataFrame, by=SUMMARY_KEYS) -> pd.DataFrame:
    """Median and spread (quartiles, IQR) of `value` over the stimuli, per test, method,
    channel, step and metric (`by`: other groupings, e.g. without `channel` to pool units).
    `n`: the stimuli with a defined value."""
    groups = frame.groupby(list(by), dropna=False, sort=False)["value"]
    out = groups.agg(median="median", q25=lambda v: v.quantile(0.25),
                     q75=lambda v: v.quantile(0.75), n="count").reset_index()
    out["iqr"] = out["q75"] - out["q25"]
    return out


def report_lines(frame: pd.DataFrame) -> list[str]:
    """What the command prints: per randomisation test, the median Spearman(|map|) over stimuli
    and channels per method and randomised layer; per curve, the median area."""
    lines = []
    pooled = summary(frame, ["test", "method", "step", "metric"])
    for test in pooled["test"].unique():
        rows = pooled[pooled["test"] == test]
        if test.startswith("mprt"):
            rows = rows[rows["metric"] == "spearman_abs"]
            stages = list(dict.fromkeys(rows["step"]))
            lines.append(f"{test}: median Spearman(|map|) with the trained maps, each layer "
                         f"randomised {'with those above it' if 'cascading' in test else 'alone'}")
            lines.append("  " + "method".ljust(15) + "".join(f"{s:>10}" for s in stages))
            for method, r in rows.groupby("method", sort=False):
                lines.append("  " + method.ljust(15) + "".join(f"{v:>10.3f}" for v in r["median"]))
        else:
            rows = rows[rows["metric"] == "auc"]
            better = "lower" if test == "deletion" else "higher"
            lines.append(f"{test}: median area under the normalised curve ({better} is better; "
                         f"IQR in brackets)")
            for _, r in rows.iterrows():
                lines.append(f"  {r['method']:<15}{r['median']:>8.3f}  "
                             f"[{r['q25']:.3f}, {r['q75']:.3f}]")
    return lines


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """The table as CSV (None steps as empty cells), written whole or not at all."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
