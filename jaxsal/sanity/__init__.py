"""Can these maps be trusted? Sanity checks and faithfulness scores for a unit's saliency maps.

    df = jaxsal.check("AlexNet", "conv5", [60, 125], "examples/examples.stim.csv",
                      methods=["vanilla", "guided"])          # or: dnn_saliency_check ...

For the same units, stimuli and methods as a saliency run (docs/methods.md, "Sanity checks"):

* model-parameter randomisation (MPRT; Adebayo et al., "Sanity Checks for Saliency Maps", 2018):
  the layers at or below the target are re-initialised from the top, cumulatively (cascading)
  or one at a time (independent), and each map is compared with the trained network's;
* deletion and insertion curves on the target unit, against a random pixel order.

One module per concern: `plan` (the request, checked; no JAX), `stages` (which layers are
randomised, and the law of each kind of parameter; no JAX), `randomise` (the seeded draws and
the parameter sets), `similarity` (Spearman, SSIM, top-k overlap), `curves` (baselines, masked
inputs, normalised curves and areas), `engine` (the batches on the device), `frame` (the tidy
table, its summary, the CSV), `figures`, `api` (`check`, `run_check`), `command`
(dnn_saliency_check). Importing this package imports no JAX.
"""
from jaxsal.sanity.plan import TESTS, CheckPlan, CheckRequest, validate

__all__ = ["TESTS", "CheckPlan", "CheckReport", "CheckRequest", "check", "run_check", "validate"]


def __getattr__(name):
    if name in ("check", "run_check", "CheckReport"):  # pandas; JAX once validated
        from jaxsal.sanity import api

        return getattr(api, name)
    raise AttributeError(f"module 'jaxsal.sanity' has no attribute {name!r}")
