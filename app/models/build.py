"""Build a model's inventory and PEFT target resolutions from the real libraries (runs in a worker process).

The model is the class the fine-tuner loads: the config's ``architectures`` entry when transformers 5.24
has it (``…ForCausalLM``, ``…ForConditionalGeneration`` for vision-language models), else
``AutoModelForCausalLM`` / ``AutoModelForImageTextToText``, instantiated on the meta device (no memory).
From it:

- the inventory: every ``named_modules()`` entry and every ``named_parameters(remove_duplicate=False)``
  tensor (a second name for a tensor is marked tied, as ``num_parameters()`` counts it once);
- the modules bitsandbytes quantizes: transformers' own ``replace_with_bnb_linear`` run with the skip list
  ``Bnb4BitHfQuantizer._process_model_before_weight_loading`` uses (``get_modules_to_not_convert`` with the
  model's ``_keep_in_fp32_modules``; ``quantizers/quantizer_bnb_4bit.py``);
- per LoRA target spec, PEFT 0.21.2's ``get_peft_model`` on a copy: the modules it wrapped, the parameters
  it targeted (with the rank it gave them) and the ``modules_to_save`` wrappers, or its refusal. Each
  resolution is checked against PEFT's own ``get_nb_trainable_parameters()``.

Imports torch, transformers, PEFT and bitsandbytes: only ever import this module in a worker.
"""

from __future__ import annotations

import copy
import re
import warnings
from typing import Any

import torch
from torch import nn

from app.core.adapters import plan_adapters
from app.core.architectures import LIMITS, ArchSpec
from app.core.errors import PlanError
from app.core.generic import Resolution, canonical_json, inventory_to_data, register
from app.core.inventory import CONV1D, EMBEDDING, EXPERTS, LINEAR, NORM, OTHER, ROUTER, Inventory, Module, Tensor
from app.core.request import LoraSpec

CONFIG_META_KEYS = {"architectures", "transformers_version", "auto_map", "model_type", "_name_or_path",
                    "quantization_config", "torch_dtype", "dtype"}
PROBE_RANK = 8  # the rank of the get_peft_model probe; the planner scales every adapter shape with r
_LAYER = re.compile(r"\.(?:layers|h|blocks|block|layer)\.(\d+)(?:\.|$)")
# Breakdown groups by a substring of a name segment, first match wins (the rules' groups, plus vision/mixer).
_GROUP_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("vision", ("vision", "visual", "image", "patch_embed", "multi_modal_projector", "mm_projector", "audio")),
    ("experts", ("expert",)),
    ("router", ("router",)),
    ("attention", ("attn", "attention")),
    ("mixer", ("mixer", "mamba")),
    ("mlp", ("mlp", "feed_forward", "ffn")),
)

def hf_config(cfg: dict[str, Any]) -> Any:
    """``AutoConfig.for_model`` of a config.json dict (quantization metadata dropped: the fine-tuning recipe
    loads MXFP4/FP8 checkpoints dequantized to bf16, or re-quantized by bitsandbytes for QLoRA)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = cfg.get("model_type")
    if model_type not in CONFIG_MAPPING:
        hint = (" It names remote code (auto_map), which the planner does not run (trust_remote_code)."
                if "auto_map" in cfg else "")
        raise PlanError(("model", "config", "model_type"),
                        f"transformers 5.24 has no model_type {model_type!r}.{hint}")
    cfg = copy.deepcopy(cfg)  # transformers standardises nested dicts (rope parameters) in place
    try:
        config = AutoConfig.for_model(model_type, **{k: v for k, v in cfg.items() if k not in CONFIG_META_KEYS})
    except Exception as exc:  # whatever transformers raises, the config cannot be built: a 422
        raise PlanError(("model", "config"), f"transformers 5.24 refuses this config: {type(exc).__name__}: "
                                             f"{exc}") from None
    config.use_cache = False
    return config


def model_class(config: Any, architectures: list[str] | None) -> type:
    """The class the fine-tuner would load (see the module docstring)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    for name in architectures or []:
        cls = getattr(transformers, name, None) if isinstance(name, str) else None
        if cls is not None and name.endswith(("ForCausalLM", "ForConditionalGeneration")):
            return cls
    for auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
        if type(config) in auto._model_mapping:
            return auto._model_mapping[type(config)]
    raise PlanError(("model", "config", "model_type"),
                    f"transformers 5.24 has no causal-LM or image-text-to-text model for {config.model_type!r}")


def _attr(config: Any, key: str) -> Any:
    """``config.key``, or None where it is absent or per-layer (transformers' heterogeneous configs raise)."""
    try:
        return getattr(config, key, None)
    except Exception:  # e.g. AmbiguousGlobalPerLayerAttributeError (gemma4's head_dim)
        return None


def _check_limits(config: Any) -> None:
    text = config.get_text_config()
    for key, limit in LIMITS.items():
        value = _attr(text, key)
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= limit:
            raise PlanError(("model", "config", key), f"must be between 0 and {limit}, got {value}")


def meta_model(cfg: dict[str, Any], max_modules: int) -> nn.Module:
    config = hf_config(cfg)
    _check_limits(config)
    cls = model_class(config, cfg.get("architectures"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            try:
                model = cls._from_config(config, dtype=torch.bfloat16)
            except Exception as exc:  # as above: the model cannot be built from this config
                raise PlanError(("model", "config"),
                                f"transformers could not build {cls.__name__}: {type(exc).__name__}: {exc}") from None
    count = sum(1 for _ in model.modules())
    if count > max_modules:
        raise PlanError(("model", "config"), f"the model has {count} modules; the planner builds at most {max_modules}")
    return model


def _group(name: str, kind: str, output_name: str | None) -> str:
    if name == output_name:
        return "lm_head"
    segments = name.split(".")
    vision = any(k in seg for seg in segments for k in _GROUP_RULES[0][1])
    if kind == EMBEDDING and not vision:
        return "embedding"
    if kind == NORM:
        return "norms"
    if kind == ROUTER and not vision:
        return "router"
    for group, keys in _GROUP_RULES:
        if any(k in seg for seg in segments for k in keys):
            return group
    return "model"


def _kind(module: nn.Module) -> str:
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return CONV1D
    if isinstance(module, nn.Linear):
        return LINEAR
    if isinstance(module, nn.Embedding):
        return EMBEDDING
    own = [p for p in module._parameters.values() if p is not None]
    if "Norm" in type(module).__name__ or isinstance(module, nn.LayerNorm):
        return NORM
    if any(p.dim() == 3 for p in own):
        return EXPERTS
    if "Router" in type(module).__name__ or (own and type(module).__name__.endswith("Gate")):
        return ROUTER
    return OTHER


def _features(module: nn.Module, kind: str) -> tuple[int, int, bool]:
    if kind == CONV1D:
        k, n = module.weight.shape
        return k, n, module.bias is not None
    if kind == LINEAR:
        return module.in_features, module.out_features, module.bias is not None
    if kind == EMBEDDING:
        return module.num_embeddings, module.embedding_dim, False
    return 0, 0, False


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _arch(config: Any, inv_tensors: list[Tensor], output_name: str | None) -> ArchSpec:
    """The summary numbers the core reports (and sizes buffers with) from the text config."""
    t = config.get_text_config()
    hidden = _int(_attr(t, "hidden_size"))
    heads = _int(_attr(t, "num_attention_heads"))
    kv = _int(_attr(t, "num_key_value_heads")) or heads
    head_dim = _int(_attr(t, "head_dim")) or (hidden // heads if heads else 0)
    experts = next((_int(_attr(t, k)) for k in ("num_experts", "num_local_experts", "n_routed_experts")
                    if _int(_attr(t, k))), 0)
    head = next((x for x in inv_tensors if output_name and x.name == f"{output_name}.weight"), None)
    return ArchSpec(
        model_type=config.model_type,
        vocab_size=_int(_attr(t, "vocab_size")) or (head.shape[0] if head else 0),
        hidden_size=hidden,
        intermediate_size=_int(_attr(t, "intermediate_size")) or 4 * hidden,
        num_hidden_layers=_int(_attr(t, "num_hidden_layers")),
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        tie_word_embeddings=bool(head and head.tied),
        num_experts=experts,
        num_experts_per_tok=_int(_attr(t, "num_experts_per_tok")),
        moe_intermediate_size=_int(_attr(t, "moe_intermediate_size")),
        max_position_embeddings=_int(_attr(t, "max_position_embeddings")),
    )


def _output_name(model: nn.Module) -> str | None:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return next((n for n, m in model.named_modules() if out is not None and m is out), None)


def quantizable_modules(model: nn.Module) -> list[str]:
    """Names of the modules transformers' bitsandbytes path replaces by ``Linear4bit`` (``Linear8bitLt`` takes
    the same ones): ``replace_with_bnb_linear`` on a copy, with the quantizer's skip list."""
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.quantizers.quantizer_bnb_4bit import Bnb4BitHfQuantizer

    work = copy.deepcopy(model)
    skip = Bnb4BitHfQuantizer.get_modules_to_not_convert(work, None, work._keep_in_fp32_modules)
    replace_with_bnb_linear(work, modules_to_not_convert=skip,
                            quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    return [n for n, m in work.named_modules() if isinstance(m, bnb.nn.Linear4bit)]


def inventory_of(model: nn.Module, config: Any, key: str) -> Inventory:
    output_name = _output_name(model)
    modules: list[Module] = []
    kinds: dict[str, str] = {}
    for name, mod in model.named_modules():
        if not name:
            continue
        kind = _kind(mod)
        k, n, bias = _features(mod, kind)
        layer = _LAYER.search(name)
        kinds[name] = kind
        modules.append(Module(name=name, kind=kind, group=_group(name, kind, output_name), in_features=k,
                              out_features=n, has_bias=bias, layer=int(layer.group(1)) if layer else None))
    groups = {m.name: m.group for m in modules}
    seen: set[int] = set()
    tensors: list[Tensor] = []
    for name, p in model.named_parameters(remove_duplicate=False):
        owner = name.rpartition(".")[0]
        group = groups.get(owner, "model")
        tensors.append(Tensor(name=name, shape=tuple(p.shape), module=owner, group=group, tied=id(p) in seen))
        seen.add(id(p))
    inv = Inventory(arch=_arch(config, tensors, output_name), modules=modules, tensors=tensors,
                    quantizable=tuple(quantizable_modules(model)), generic_key=key, model_class=type(model).__name__)
    return inv


_REFUSAL_LOCS = ("target_modules", "target_parameters", "modules_to_save", "layers_to_transform", "layers_pattern",
                 "bias", "lora_dropout", "use_dora")


def _refusal(exc: Exception) -> Resolution:
    msg = str(exc)
    field = next((f for f in _REFUSAL_LOCS if f in msg), "target_modules")
    loc = ("lora", "layers_to_transform" if field == "layers_pattern" else field)
    if field == "use_dora":
        loc = ("method",)
    return Resolution(error_loc=loc, error=f"PEFT 0.21.2 refuses: {msg}")


def resolve_targets(model: nn.Module, inv: Inventory, spec: dict[str, Any]) -> Resolution:
    """Run ``get_peft_model`` for ``spec`` (see :func:`app.core.generic.target_spec`) on a copy of ``model``."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer, ParamWrapper
    from peft.utils.other import ModulesToSaveWrapper

    work = copy.deepcopy(model)
    names = {id(m): n for n, m in work.named_modules()}
    dropout = 0.05 if spec["dropout"] else 0.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(work, LoraConfig(
                r=PROBE_RANK, lora_alpha=16, lora_dropout=dropout, target_modules=spec["target_modules"],
                target_parameters=spec["target_parameters"], layers_to_transform=spec["layers_to_transform"],
                bias=spec["bias"], modules_to_save=spec["modules_to_save"], use_dora=spec["use_dora"]))
    except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError, AttributeError) as exc:
        return _refusal(exc)
    targets: list[str] = []
    params: list[tuple[str, int]] = []
    saved: list[str] = []
    for mod in peft_model.modules():
        if isinstance(mod, ParamWrapper):
            owner = mod.get_base_layer()
            tensor = getattr(owner, mod.parameter_name)
            experts = tensor.shape[0] if tensor.dim() == 3 else 1
            rows = mod.lora_A["default"].weight.shape[0]
            params.append((f"{names[id(owner)]}.{mod.parameter_name}", rows // (PROBE_RANK * experts)))
        elif isinstance(mod, LoraLayer):
            base = mod.get_base_layer()
            name = names[id(base)]
            if inv.module_by_name[name].kind not in (LINEAR, CONV1D, EMBEDDING):
                return Resolution(error_loc=("lora", "target_modules"), error=(
                    f"PEFT adapts {name!r} ({type(base).__name__}); the planner prices LoRA on Linear, Conv1D and "
                    "Embedding modules only: leave it out of target_modules"))
            targets.append(name)
        elif isinstance(mod, ModulesToSaveWrapper):
            saved.append(names[id(mod.original_module)])
    res = Resolution(targets=tuple(targets), param_targets=tuple(sorted(params)), saved=tuple(saved))
    return _check_counts(peft_model, inv, spec, res)


def _check_counts(peft_model: nn.Module, inv: Inventory, spec: dict[str, Any], res: Resolution) -> Resolution:
    """The core's adapter plan for this resolution must train exactly what PEFT trains; else the request is
    refused rather than priced wrong."""
    lora = LoraSpec(r=PROBE_RANK, lora_dropout=0.05 if spec["dropout"] else 0.0,
                    target_modules=spec["target_modules"], target_parameters=spec["target_parameters"],
                    layers_to_transform=spec["layers_to_transform"], bias=spec["bias"],
                    modules_to_save=spec["modules_to_save"])
    register(inv.generic_key or "", inv, {canonical_json(spec): res})
    plan = plan_adapters(inv, lora, method="dora" if spec["use_dora"] else "lora")
    trainable, _ = peft_model.get_nb_trainable_parameters()
    if plan.trainable_params == trainable:
        return res
    return Resolution(error_loc=("lora", "target_modules"), error=(
        f"the planner cannot price this adapter layout exactly (PEFT trains {trainable} parameters at r="
        f"{PROBE_RANK}, the planner's plan {plan.trainable_params}); try other target_modules"))


def build(cfg: dict[str, Any], key: str, specs: list[dict[str, Any]], max_modules: int) -> dict[str, Any]:
    """Worker entry point: ``{"inventory": data, "resolutions": {target_key: data}}`` or ``{"error": [loc, msg]}``."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        config = hf_config(cfg)
        model = meta_model(cfg, max_modules)
        inv = inventory_of(model, config, key)
        resolutions = {}
        for spec in specs:
            resolutions[canonical_json(spec)] = resolve_targets(model, inv, spec).as_data()
    except PlanError as exc:
        return {"error": [list(exc.loc), exc.message]}
    except Exception as exc:  # never a 500: whatever else the libraries raise on this config is a 422
        return {"error": [["model", "config"], f"the planner cannot build this model: {type(exc).__name__}: {exc}"]}
    return {"inventory": inventory_to_data(inv), "resolutions": resolutions}
