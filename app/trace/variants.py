"""Small variants of a transformers model: its decoder layers grouped by kind, and the model cut to a few of them.

A decoder's layers differ in kind where their module trees differ (dense MLP vs routed experts, a Mamba or
gated-DeltaNet mixer vs attention, DeepSeek's dense prefix) or where a layer's own settings differ with the
same modules (sliding-window vs full attention, Llama-4's no-RoPE layers, Gemma's KV-sharing layers): the
kind of a layer is a hash of its submodules' names, classes, parameter shapes and scalar attributes, leaving
out attributes that only number the layer (``layer_idx`` …). :func:`keep_layers` replaces the decoder's
``ModuleList`` by the chosen layers; transformers' decoders run ``self.layers[: num_hidden_layers]`` and pick
each layer's mask from the layer's own ``attention_type`` / ``layer_type``, so the cut model runs the same
per-layer code as the full one.

Imports torch: only ever import this module in a worker.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

from torch import nn

_INDEX_ATTR = re.compile(r"idx|index|layer_id|layer_num|layer_number")
_VISION = ("vision", "visual", "image", "audio")


def decoder_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute, list) of the text decoder's layers: the ``ModuleList`` with as many entries as the
    text config's ``num_hidden_layers``, outside any vision or audio tower."""
    want = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) != want:
            continue
        if any(v in seg for seg in name.split(".") for v in _VISION):
            continue
        parent_name, _, attr = name.rpartition(".")
        return model.get_submodule(parent_name), attr, module
    raise ValueError(f"no decoder ModuleList of {want} layers in {type(model).__name__}")


def _scalar_attrs(module: nn.Module) -> list[tuple[str, object]]:
    out = []
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training" or _INDEX_ATTR.search(key):
            continue
        if value is None or isinstance(value, bool | int | float | str):
            out.append((key, value))
    return sorted(out)


def layer_kind(layer: nn.Module) -> str:
    """A short hash of what decides a layer's activations (see the module docstring)."""
    rows = []
    for name, module in layer.named_modules():
        params = [(n, list(p.shape), str(p.dtype)) for n, p in module.named_parameters(recurse=False)]
        rows.append([name, type(module).__name__, params, _scalar_attrs(module)])
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:16]


def layer_kinds(model: nn.Module) -> list[str]:
    """The kind of each decoder layer, in order."""
    return [layer_kind(layer) for layer in decoder_layers(model)[2]]


def keep_layers(model: nn.Module, indices: Sequence[int]) -> None:
    """Keep only the decoder layers ``indices`` (in the given order) of ``model``, in place."""
    parent, attr, layers = decoder_layers(model)
    setattr(parent, attr, nn.ModuleList([layers[i] for i in indices]))
