"""A network with its weights on the device: `Net`, made by `load_net`."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxsal import arguments
from jaxsal.models import LayerInfo, NetSpec, get_net_spec
from jaxsal.weights import Weights, check_layer_weights, load_weights
from jaxsal.xla_config import tune_cpu_on_first_use


@dataclasses.dataclass
class Net:
    """A network with its weights, ready for `jaxsal.saliency`."""

    spec: NetSpec
    weights: Weights
    params: dict  # nested Flax params {'conv1': {'kernel', 'bias'}, ...} as jax arrays

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> str:
        """Which weights this network uses, in one line."""
        return f"{self.spec.name} with {self.weights.describe()}"

    def check_layer(self, layer: str) -> LayerInfo:
        """The layer's info; a UsageError if the layer is unknown or its weights are missing."""
        return check_layer_weights(self.spec, self.weights, layer)


def nest_params(flat: dict) -> dict:
    """{'conv1.kernel': a, 'layer1_bottleneck0.conv1.kernel': b} -> nested dicts, as Flax has
    them."""
    nested: dict = {}
    for key, value in flat.items():
        *scopes, leaf = key.split(".")
        node = nested
        for scope in scopes:
            node = node.setdefault(scope, {})
        node[leaf] = value
    return nested


def load_net(name: str = "AlexNet", weights=None) -> Net:
    """Load a network by name with pretrained weights.

    `weights`: a .safetensors or torchvision .pth path, or None to resolve automatically
    (`jaxsal.weights.load_weights`: $JAXSAL_WEIGHTS, the jaxsal cache, the torch hub cache,
    $DNNBRAIN_DATA, then the bundled file).
    """
    spec = get_net_spec(arguments.name("name", name))
    weights = arguments.optional(arguments.path)("weights", weights)
    return net_from_weights(spec, load_weights(spec, weights))


def net_from_weights(spec: NetSpec, weights: Weights, reporter=None) -> Net:
    """A `Net` from weights already read from disk (`jaxsal.weights.load_weights`).

    Putting the weights on the device starts JAX's backend: jaxsal's CPU tuning is applied
    just before, if this is the process's first JAX computation
    (`jaxsal.xla_config.tune_cpu_on_first_use`; `reporter` receives its note, if any)."""
    tune_cpu_on_first_use(reporter)
    params = jax.tree_util.tree_map(jnp.asarray, nest_params(weights.params))
    return Net(spec=spec, weights=weights, params=params)
