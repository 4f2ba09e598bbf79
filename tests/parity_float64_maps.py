"""jaxsal's float64 maps for every layer and method, for tests/test_saliency_parity.py.

Run in its own process, with XLA's default CPU configuration (JAXSAL_XLA_TUNING=0): the flag
jaxsal sets for float32 speed sends float64 convolutions to a path ~20x slower, which made the
float64 parity tests the longest part of the suite (see that test's docstring).

usage: python parity_float64_maps.py WEIGHTS.safetensors FOLDER
  FOLDER/x.npy (N, 224, 224, 3) float64 inputs, FOLDER/channels.json {layer: [1-based, ...]}
  (the layers computed are the keys of channels.json)
  -> FOLDER/maps.npz {"<layer>/<method>": (K, N, 3, 224, 224) float64}
"""
import functools
import json
import pathlib
import sys

import numpy as np


def main(weights: str, folder: str) -> None:
    import jax
    import jax.numpy as jnp

    import jaxsal
    from jaxsal.core.gradients import gradient_maps

    folder = pathlib.Path(folder)
    x = np.load(folder / "x.npy")
    channels = json.loads((folder / "channels.json").read_text())
    net = jaxsal.load_net("AlexNet", weights=weights)
    maps = {}
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), net.params)
        for layer in channels:
            for method in ("vanilla", "guided"):  # the gradient methods' ReLU rules
                fn = jax.jit(functools.partial(gradient_maps, net.spec, layer, method, "highest"))
                chn = jnp.asarray(np.array(channels[layer]) - 1)
                maps[f"{layer}/{method}"] = np.asarray(fn(params, jnp.asarray(x), chn))
    np.savez(folder / "maps.npz", **maps)


if __name__ == "__main__":
    main(*sys.argv[1:])
