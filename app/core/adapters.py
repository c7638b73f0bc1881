"""Which modules PEFT adapts, and every trainable tensor that results.

Replays PEFT 0.21.2's rules on the inventory:
- target matching: ``tuners/tuners_utils.py: check_target_module_exists`` (list → exact name or
  ``.name`` suffix; str → ``re.fullmatch``; ``"all-linear"`` → ``_maybe_include_all_linear_layers``:
  every ``nn.Linear``/``Conv1D`` except the output embedding); ``modules_to_save`` exclusion;
  ``layers_to_transform`` with its layer-index regex; ``target_parameters`` from ``_inject_parameters``.
- parameters: ``lora.Linear.update_layer`` (lora_A r×in, lora_B out×r), ``lora.Embedding``
  (A r×num_embeddings, B dim×r), DoRA ``lora_magnitude_vector`` (out_features), ``ParamWrapper``
  (A in×r·E, B r·E×out), ``_mark_only_adapters_as_trainable`` for ``bias``,
  ``ModulesToSaveWrapper`` (a trainable deep copy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from math import prod

import re2

from app.core.architectures import PEFT_DEFAULT_TARGET_MODULES
from app.core.errors import PlanError
from app.core.generic import resolved_targets
from app.core.inventory import CONV1D, EMBEDDING, LINEAR, Inventory, Module, Tensor
from app.core.patterns import PatternError, compile_target_regex
from app.core.request import LoraSpec

ADAPTABLE_KINDS = (LINEAR, CONV1D, EMBEDDING)

# peft/utils/transformers_weight_conversion.py: transformers 5 fused the MoE experts into 3-D parameters
# and made the router a custom module, so PEFT rewrites v4 target names (_MOE_TARGET_MODULE_MAPPING) into
# target_parameters; the two halves of a fused projection get rank and alpha doubled (_MOE_FUSED_TARGETS).
_MOE_TARGET_MAPPING: dict[str, dict[str, str]] = {
    "mixtral": {"gate": "gate.weight", "w1": "gate_up_proj", "w3": "gate_up_proj", "w2": "down_proj"},
    "qwen3_moe": {"gate": "gate.weight", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj",
                  "down_proj": "down_proj"},
}
_MOE_FUSED: dict[str, tuple[str, ...]] = {"mixtral": ("w1", "w3"), "qwen3_moe": ("gate_proj", "up_proj")}
_LAYER_INDEX = re.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")


@dataclass(frozen=True)
class TrainableTensor:
    """A tensor that gets a gradient and optimizer state.

    ``new`` is True for tensors PEFT adds (adapters, modules_to_save copies), False for base
    parameters that are unfrozen (full fine-tuning, ``bias``). ``kind`` is one of "base",
    "lora", "dora_magnitude", "bias", "modules_to_save".
    """

    name: str
    shape: tuple[int, ...]
    group: str
    kind: str
    new: bool

    @property
    def numel(self) -> int:
        return prod(self.shape)


@dataclass
class AdapterPlan:
    targets: list[Module] = field(default_factory=list)
    param_targets: list[Tensor] = field(default_factory=list)
    saved_modules: list[Module] = field(default_factory=list)
    trainable: list[TrainableTensor] = field(default_factory=list)

    @property
    def trainable_params(self) -> int:
        return sum(t.numel for t in self.trainable)

    @property
    def added_params(self) -> int:
        return sum(t.numel for t in self.trainable if t.new)


def adaptable_names(inv: Inventory) -> list[str]:
    """Distinct leaf names of the modules LoRA can adapt (for error messages)."""
    return sorted({m.leaf for m in inv.modules if m.kind in ADAPTABLE_KINDS})


def _layer_ok(name: str, layers: list[int] | None) -> bool:
    if not layers:
        return True
    match = _LAYER_INDEX.match(name)
    return match is not None and int(match.group("idx")) in layers


def _saved_match(name: str, modules_to_save: list[str]) -> bool:
    """PEFT's ``re.match(rf"(^|.*\\.){re.escape(m)}($|\\..*)", name)`` (``_check_target_module_compatiblity`` /
    ``ModulesToSaveWrapper`` matching): ``m`` is a whole run of dot-separated segments of ``name``. Same answer
    with string operations, in time linear in the name's length."""
    dotted = f".{name}."
    return any(f".{m}." in dotted for m in modules_to_save)


def _pattern(tm: str) -> re2._Regexp:
    """The compiled ``target_modules`` regex (RE2, linear time: app/core/patterns.py)."""
    try:
        return compile_target_regex(tm)
    except PatternError as exc:
        raise PlanError(("lora", "target_modules"), str(exc)) from None


def _resolve_module_targets(inv: Inventory, lora: LoraSpec) -> list[Module]:
    tm = lora.target_modules
    model_type = inv.arch.model_type
    if tm is None and lora.target_parameters:
        return []
    if tm is None:
        default = PEFT_DEFAULT_TARGET_MODULES[model_type]
        if default is None:
            raise PlanError(
                ("lora", "target_modules"),
                f"PEFT has no default target_modules for model_type {model_type!r}; name them "
                f"(one of: {', '.join(adaptable_names(inv))}) or use 'all-linear'",
            )
        tm = default
    saved = lora.modules_to_save or []
    candidates = [m for m in inv.modules if not (saved and _saved_match(m.name, saved))]
    if isinstance(tm, str) and tm.lower() == "all-linear":
        matched = [m for m in candidates if m.kind in (LINEAR, CONV1D) and m.name != "lm_head"]
    elif isinstance(tm, str):
        pattern = _pattern(tm)
        matched = [m for m in candidates if pattern.fullmatch(m.name)]
        if not matched:
            raise PlanError(
                ("lora", "target_modules"),
                f"regex {tm!r} matches no module name; adaptable modules: {', '.join(adaptable_names(inv))}",
            )
    else:
        if not tm and not lora.target_parameters:
            raise PlanError(("lora", "target_modules"), "is empty and no target_parameters are given")
        names = set(tm)
        matched = [m for m in candidates if m.name in names or any(m.name.endswith("." + t) for t in tm)]
        unmatched = [t for t in tm if not any(m.name == t or m.name.endswith("." + t) for m in matched)]
        if unmatched:
            raise PlanError(
                ("lora", "target_modules"),
                f"{', '.join(map(repr, unmatched))} match no module of this {model_type} model; "
                f"adaptable modules: {', '.join(adaptable_names(inv))}",
            )
    matched = [m for m in matched if _layer_ok(m.name, lora.layers_to_transform)]
    for m in matched:
        if m.kind not in ADAPTABLE_KINDS:
            raise PlanError(
                ("lora", "target_modules"),
                f"module {m.name!r} is a {m.kind} module; PEFT LoRA adapts only Linear, Conv1D and Embedding "
                f"layers (adaptable here: {', '.join(adaptable_names(inv))})",
            )
    if not matched and not lora.target_parameters:
        raise PlanError(("lora", "layers_to_transform"), "no targeted module lies in the listed layers")
    return matched


def _resolve_param_targets(inv: Inventory, lora: LoraSpec, dora: bool) -> list[Tensor]:
    names = lora.target_parameters or []
    if not names:
        return []
    if dora:
        raise PlanError(
            ("lora", "target_parameters"),
            "PEFT cannot use DoRA on parameters targeted directly (ParamWrapper does not work with "
            "use_dora=True), which is how fused MoE experts are adapted; use method 'lora'/'qlora' for them "
            "or target only linear modules",
        )
    if lora.lora_dropout:
        raise PlanError(
            ("lora", "lora_dropout"),
            "PEFT's ParamWrapper (target_parameters) does not work with lora_dropout != 0: set it to 0",
        )
    matched = [
        t for t in inv.unique_tensors()
        if (t.name in names or any(t.name.endswith("." + n) for n in names))
        and _layer_ok(t.name, lora.layers_to_transform)
    ]
    unmatched = [n for n in names if not any(t.name == n or t.name.endswith("." + n) for t in matched)]
    if unmatched:
        multi_d = sorted({t.name.split(".", 3)[-1] for t in inv.unique_tensors() if len(t.shape) >= 2})
        raise PlanError(
            ("lora", "target_parameters"),
            f"{', '.join(map(repr, unmatched))} match no parameter; parameters with 2 or 3 dimensions: "
            f"{', '.join(multi_d)}",
        )
    for t in matched:
        if len(t.shape) not in (2, 3):
            raise PlanError(
                ("lora", "target_parameters"),
                f"{t.name!r} has {len(t.shape)} dimension(s); PEFT adapts only 2-D and 3-D parameters",
            )
    return matched


def _resolve_saved(inv: Inventory, lora: LoraSpec) -> list[Module]:
    saved_names = lora.modules_to_save or []
    out: list[Module] = []
    for name in saved_names:
        # ModulesToSaveWrapper wraps modules whose name is `name` or ends with `.name`.
        hits = [m for m in inv.modules if m.name == name or m.name.endswith("." + name)]
        if not hits:
            raise PlanError(
                ("lora", "modules_to_save"),
                f"{name!r} matches no module; modules with parameters: "
                f"{', '.join(sorted({t.module.rsplit('.', 1)[-1] for t in inv.tensors}))}",
            )
        out.extend(hits)
    return out


def _convert_moe_targets(inv: Inventory, lora: LoraSpec) -> tuple[LoraSpec, int]:
    """PEFT's v4→v5 MoE target conversion; returns the rewritten spec and the rank multiplier of gate_up_proj."""
    mapping = _MOE_TARGET_MAPPING.get(inv.arch.model_type)
    if mapping is None or inv.legacy_moe:  # transformers 4.x: experts are nn.Linear modules, matched by name
        return lora, 1
    tm = lora.target_modules
    if tm is None and lora.target_parameters:
        tm = []
    if tm is None:
        raise PlanError(
            ("lora", "target_modules"),
            f"PEFT 0.21 under transformers 5 finds no default target for {inv.arch.model_type} (its MoE target "
            f"conversion empties the default list); name them, e.g. ['q_proj', 'v_proj'] or 'all-linear'",
        )
    if isinstance(tm, str):
        if tm.lower() == "all-linear":
            leaves = {m.leaf for m in inv.modules if m.kind in (LINEAR, CONV1D) and m.name != "lm_head"}
            tm_list = sorted(leaves | mapping.keys())
        else:
            pattern = _pattern(tm)
            keys = [m.name for m in inv.modules] + [t.name for t in inv.unique_tensors()]
            found = {k.rsplit(".", 1)[-1] for k in keys if pattern.fullmatch(k)}
            for old, new in mapping.items():
                containers = {t.name.rpartition(".")[0] for t in inv.tensors if t.name.endswith("." + new)}
                if old not in found and any(pattern.fullmatch(f"{c}.{old}") for c in containers):
                    found.add(old)
            if not found:
                return lora, 1
            tm_list = sorted(found)
    else:
        tm_list = list(tm)
    params = set(lora.target_parameters or [])
    modules: list[str] = []
    fused_seen: set[str] = set()
    for target in tm_list:
        old = next((o for o in mapping if target == o or target.endswith("." + o)), None)
        if old is None:
            modules.append(target)
            continue
        params.add(mapping[old])
        if old in _MOE_FUSED[inv.arch.model_type]:
            fused_seen.add(old)
    fused = _MOE_FUSED[inv.arch.model_type]
    if 0 < len(fused_seen) < len(fused):
        raise PlanError(
            ("lora", "target_modules"),
            f"PEFT cannot target {', '.join(sorted(fused_seen))} without also targeting "
            f"{', '.join(sorted(set(fused) - fused_seen))}: transformers 5 fuses them into gate_up_proj",
        )
    converted = lora.model_copy(update={"target_modules": modules, "target_parameters": sorted(params) or None})
    return converted, len(fused) if len(fused_seen) == len(fused) else 1


def plan_adapters(inv: Inventory, lora: LoraSpec, *, method: str) -> AdapterPlan:
    """Targets and trainable tensors for ``method`` (``full`` trains every base parameter)."""
    plan = AdapterPlan()
    if method == "full":
        plan.trainable = [
            TrainableTensor(t.name, t.shape, t.group, "base", new=False) for t in inv.unique_tensors()
        ]
        return plan
    dora = method in ("dora", "qdora")
    if inv.generic_key is not None:  # built from the real model: PEFT itself resolved the targets
        plan.targets, plan.param_targets, plan.saved_modules, multipliers = resolved_targets(inv, lora, dora=dora)
    else:
        lora, fused_rank = _convert_moe_targets(inv, lora)
        plan.targets = _resolve_module_targets(inv, lora)
        plan.param_targets = _resolve_param_targets(inv, lora, dora)
        plan.saved_modules = _resolve_saved(inv, lora)
        multipliers = {t.name: fused_rank for t in plan.param_targets if t.name.endswith(".gate_up_proj")}
    r = lora.r
    for m in plan.targets:
        if m.kind == EMBEDDING:
            # lora.Embedding: lora_embedding_A (r, num_embeddings), lora_embedding_B (embedding_dim, r)
            plan.trainable.append(TrainableTensor(f"{m.name}.lora_embedding_A", (r, m.in_features), m.group,
                                                  "lora", True))
            plan.trainable.append(TrainableTensor(f"{m.name}.lora_embedding_B", (m.out_features, r), m.group,
                                                  "lora", True))
        else:
            plan.trainable.append(TrainableTensor(f"{m.name}.lora_A", (r, m.in_features), m.group, "lora", True))
            plan.trainable.append(TrainableTensor(f"{m.name}.lora_B", (m.out_features, r), m.group, "lora", True))
        if dora:
            plan.trainable.append(
                TrainableTensor(f"{m.name}.lora_magnitude_vector", (m.out_features,), m.group, "dora_magnitude",
                                True)
            )
    for t in plan.param_targets:
        rank = r * multipliers.get(t.name, 1)
        experts = t.shape[0] if len(t.shape) == 3 else 1
        # 3-D (E, out, in) experts: PEFT swaps in/out unless the module is marked is_transposed
        d_in, d_out = (t.shape[2], t.shape[1]) if len(t.shape) == 3 else (t.shape[1], t.shape[0])
        # ParamWrapper: lora_A = Linear(in, r·E), lora_B = Linear(r·E, out) → weights (r·E, in), (out, r·E)
        plan.trainable.append(TrainableTensor(f"{t.name}.lora_A", (rank * experts, d_in), t.group, "lora", True))
        plan.trainable.append(TrainableTensor(f"{t.name}.lora_B", (d_out, rank * experts), t.group, "lora", True))
    for m in plan.saved_modules:
        # ModulesToSaveWrapper deep-copies the module: a tied lm_head gets its own trainable weight too
        for t in (t for t in inv.tensors if t.module == m.name or t.module.startswith(m.name + ".")):
            plan.trainable.append(TrainableTensor(f"{t.name}.modules_to_save", t.shape, m.group,
                                                  "modules_to_save", True))
    if lora.bias != "none":
        target_names = {m.name for m in plan.targets}
        for t in inv.unique_tensors():
            if t.is_bias and (lora.bias == "all" or t.module in target_names):
                plan.trainable.append(TrainableTensor(t.name, t.shape, t.group, "bias", new=False))
    return plan
