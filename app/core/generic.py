"""Models outside the hand-written rules: their inventories and PEFT target resolutions, as plain data.

``app/models/generic.py`` builds them from the real thing (the transformers model on the meta device,
PEFT's ``get_peft_model``, transformers' bitsandbytes module selection) in a worker process, stores them
persistently and registers them here before the core is asked. The core then prices such a model with the
same machinery as a catalog model: :func:`model_inventory` returns the registered :class:`Inventory`, and
:func:`resolved_targets` the modules PEFT adapted for a LoRA target spec (rank-independent, so any ``r``
costs nothing more).

Keys: :func:`config_key` is the sha256 of the canonical config.json plus :data:`MODELLED_VERSIONS`;
:func:`target_key` is the canonical part of a ``LoraConfig`` that decides which modules PEFT wraps.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from app.core.architectures import SUPPORTED_MODEL_TYPES, ArchSpec, parse_config
from app.core.catalog import model_config
from app.core.errors import PlanError
from app.core.inventory import Inventory, Module, Tensor, build_inventory
from app.core.request import LoraSpec, ModelConfig
from app.core.versions import MODELLED_VERSIONS

MAX_REGISTERED = 256  # inventories kept in memory (the persistent store keeps every one)


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_key(cfg: dict[str, Any]) -> str:
    """sha256 of the canonical config.json and the modelled library versions."""
    return hashlib.sha256(canonical_json({"config": cfg, "versions": MODELLED_VERSIONS}).encode()).hexdigest()


def target_spec(lora: LoraSpec, *, dora: bool) -> dict[str, Any]:
    """The ``LoraConfig`` fields that decide which modules and parameters PEFT wraps, or whether it refuses
    (``r``, ``lora_alpha`` and the dropout's size do not; only whether dropout is on does)."""
    return {"target_modules": lora.target_modules, "target_parameters": lora.target_parameters,
            "layers_to_transform": lora.layers_to_transform, "bias": lora.bias,
            "modules_to_save": lora.modules_to_save, "dropout": lora.lora_dropout > 0, "use_dora": dora}


def target_key(lora: LoraSpec, *, dora: bool) -> str:
    return canonical_json(target_spec(lora, dora=dora))


def uses_rules(cfg: dict[str, Any]) -> bool:
    """True where the hand-written rules (no torch) cover the config's model_type."""
    return isinstance(cfg, dict) and cfg.get("model_type") in SUPPORTED_MODEL_TYPES


@dataclass(frozen=True)
class Resolution:
    """What PEFT's ``get_peft_model`` did for one target spec: the adapted module names, the targeted
    parameters with their rank multiplier (PEFT doubles r for transformers 5's fused ``gate_up_proj``), the
    ``modules_to_save`` wrappers; or its refusal (``error_loc``, ``error``) quoted from PEFT."""

    targets: tuple[str, ...] = ()
    param_targets: tuple[tuple[str, int], ...] = ()
    saved: tuple[str, ...] = ()
    error_loc: tuple[str, ...] = ()
    error: str | None = None

    def as_data(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Resolution:
        return cls(targets=tuple(data["targets"]), param_targets=tuple((n, int(k)) for n, k in data["param_targets"]),
                   saved=tuple(data["saved"]), error_loc=tuple(data["error_loc"]), error=data["error"])


def inventory_to_data(inv: Inventory) -> dict[str, Any]:
    """An inventory as JSON-able lists (module and tensor rows in ``named_modules()`` order)."""
    return {
        "arch": asdict(inv.arch),
        "modules": [[m.name, m.kind, m.group, m.in_features, m.out_features, m.has_bias, m.layer]
                    for m in inv.modules],
        "tensors": [[t.name, list(t.shape), t.module, t.group, t.tied] for t in inv.tensors],
        "quantizable": list(inv.quantizable) if inv.quantizable is not None else None,
        "generic_key": inv.generic_key,
        "model_class": inv.model_class,
    }


def inventory_from_data(data: dict[str, Any]) -> Inventory:
    arch = dict(data["arch"])
    arch["sparse_layers"] = tuple(arch["sparse_layers"])
    return Inventory(
        arch=ArchSpec(**arch),
        modules=[Module(name=n, kind=k, group=g, in_features=i, out_features=o, has_bias=b, layer=layer)
                 for n, k, g, i, o, b, layer in data["modules"]],
        tensors=[Tensor(name=n, shape=tuple(s), module=m, group=g, tied=t) for n, s, m, g, t in data["tensors"]],
        quantizable=tuple(data["quantizable"]) if data["quantizable"] is not None else None,
        generic_key=data["generic_key"],
        model_class=data["model_class"],
    )


_INVENTORIES: OrderedDict[str, Inventory] = OrderedDict()
_RESOLUTIONS: dict[str, dict[str, Resolution]] = {}


def register(key: str, inv: Inventory | None = None, resolutions: dict[str, Resolution] | None = None) -> None:
    """Make a built inventory and/or target resolutions of config ``key`` known to the core."""
    if inv is not None:
        _INVENTORIES[key] = inv
        _INVENTORIES.move_to_end(key)
        while len(_INVENTORIES) > MAX_REGISTERED:
            old, _ = _INVENTORIES.popitem(last=False)
            _RESOLUTIONS.pop(old, None)
    if resolutions:
        _RESOLUTIONS.setdefault(key, {}).update(resolutions)


def registered(key: str) -> Inventory | None:
    return _INVENTORIES.get(key)


def registered_resolution(key: str, tkey: str) -> Resolution | None:
    return _RESOLUTIONS.get(key, {}).get(tkey)


def generic_key(cfg: dict[str, Any]) -> str | None:
    """The registry key of a config the rules do not cover and whose inventory is registered, else None."""
    if not isinstance(cfg, dict) or uses_rules(cfg) or "model_type" not in cfg:
        return None
    key = config_key(cfg)
    return key if key in _INVENTORIES else None


@lru_cache(maxsize=256)
def _rules_inventory(model_id: str, legacy_moe: bool) -> Inventory:
    return build_inventory(parse_config(model_config(model_id)), legacy_moe=legacy_moe)


def model_inventory(model: str | ModelConfig, legacy_moe: bool = False) -> tuple[str | None, Inventory]:
    """(catalog id or None, inventory): the hand-written rules where they cover the model_type (catalog ones
    cached; ``legacy_moe``: transformers 4.57's one-Linear-per-expert MoE layout), else the registered generic
    inventory (built by transformers 5.24). Raises :class:`PlanError` when neither applies."""
    model_id = model if isinstance(model, str) else None
    cfg = model_config(model) if isinstance(model, str) else model.config
    if not isinstance(cfg, dict) or uses_rules(cfg) or "model_type" not in cfg:
        if isinstance(model, str):
            return model_id, _rules_inventory(model, legacy_moe)
        return model_id, build_inventory(parse_config(cfg), legacy_moe=legacy_moe)
    if legacy_moe:
        raise PlanError(("transformers_version",), "the transformers 4.57 module tree is modelled for the "
                        "hand-written MoE rules (mixtral, qwen3_moe); other model types are built by transformers "
                        "5.24: use '5.24'")
    inv = registered(config_key(cfg))
    if inv is None:
        raise PlanError(("model", "config", "model_type"),
                        f"model_type {cfg['model_type']!r} has no hand-written rules (those cover "
                        f"{', '.join(SUPPORTED_MODEL_TYPES)}) and no inventory was built for it: build one with "
                        "app.models.generic.ensure_generic (the API, page and CLI do)")
    return model_id, inv


def resolved_targets(inv: Inventory, lora: LoraSpec, *, dora: bool) -> tuple[list[Module], list[Tensor],
                                                                           list[Module], dict[str, int]]:
    """(targets, param_targets, saved modules, rank multiplier by tensor name) PEFT chose for a generic
    inventory; raises PEFT's refusal as a :class:`PlanError`."""
    assert inv.generic_key is not None
    res = registered_resolution(inv.generic_key, target_key(lora, dora=dora))
    if res is None:
        raise PlanError(("lora", "target_modules"),
                        "this target spec has not been resolved by PEFT for this model yet; retry the request")
    if res.error is not None:
        raise PlanError(res.error_loc or ("lora", "target_modules"), res.error)
    by_name = inv.module_by_name
    tensors = {t.name: t for t in inv.tensors}
    return ([by_name[n] for n in res.targets], [tensors[n] for n, _ in res.param_targets],
            [by_name[n] for n in res.saved], dict(res.param_targets))
