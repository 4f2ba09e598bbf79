"""Pretrained weights for jaxsal: finding, reading, converting and downloading them.

Public API (see each function's docstring):

* `load_weights(spec, path=None) -> Weights` -- the weights to use, by the search order in
  `jaxsal.weights.resolve` (explicit path, $JAXSAL_WEIGHTS, jaxsal cache, torch hub cache,
  $DNNBRAIN_DATA/models, bundled conv-only file).
* `Weights` -- params (flat float32 arrays) + source file, its sha256 and provenance.
* `cache_dir()` -- $JAXSAL_HOME or ~/.cache/jaxsal.
* `read_torch_checkpoint(path)` -- a torch.save'd state_dict as numpy arrays, without torch and
  without executing the pickle.
* `convert_checkpoint(spec, src, dst)` -- .pth -> .safetensors (atomic).
* `download(spec, url=None, dest_dir=None, progress=True)` -- fetch + verify + convert.
* `missing_weights_message(spec, layer, missing)` -- the error text for a target whose weights are missing.
* `check_layer_weights(spec, weights, layer)` -- raises that error (or an unknown-layer one).

Nothing here imports torch; user mistakes raise `jaxsal.errors.UsageError`.
"""
from jaxsal.weights.conversion import convert_checkpoint
from jaxsal.weights.fetch import download
from jaxsal.weights.params import Weights
from jaxsal.weights.resolve import (
    WeightsWarning,
    bundled_weights_path,
    cache_dir,
    cached_weights_path,
    check_layer_weights,
    missing_weights_message,
    load_weights,
)
from jaxsal.weights.torch_checkpoint import read_torch_checkpoint

__all__ = [
    "Weights",
    "WeightsWarning",
    "bundled_weights_path",
    "cache_dir",
    "cached_weights_path",
    "check_layer_weights",
    "convert_checkpoint",
    "download",
    "missing_weights_message",
    "load_weights",
    "read_torch_checkpoint",
]
