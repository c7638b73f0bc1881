"""Run the real training step of the standard HF recipe and count its memory (fake tensors: any size).

The step: transformers model from the config in the load dtype; for QLoRA/QDoRA transformers'
``replace_with_bnb_linear`` + bitsandbytes ``Params4bit`` quantization; ``prepare_model_for_kbit_training``
when on; PEFT ``get_peft_model``; gradient checkpointing when on (non-reentrant unless asked); forward with labels
(transformers' own loss) under autocast for mixed/bf16 precision, accelerate's fp32 copy of the logits
(HF Trainer's ``convert_outputs_to_fp32``), backward, ``clip_grad_norm_``, optimizer step and
``zero_grad(set_to_none=True)`` — twice. The second step's peak is reported (states resident). With
``gradient_accumulation_steps`` > 1 each step runs two micro-batches (forward and backward) before the optimizer.
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from app.core.architectures import attention_for
from app.core.catalog import gpu, model_config
from app.core.generic import uses_rules
from app.core.overhead import cublas_workspace_bytes
from app.core.precision import dtypes_for
from app.core.request import PlanRequest
from app.core.reserved import trace_report
from app.core.switches import LIGER_MODEL_TYPES, padding_free
from app.trace.counter import LiveBytesCounter, LiveTensor
from app.trace.cuda_kernels import (
    attention_name,
    bnb_dequantize_patch,
    cuda_autocast_query,
    cuda_dropout,
    fake_swap_tensors,
    grouped_mm_for_any_dtype,
    register_attention,
    transient_rules,
)
from app.trace.frameworks import recipe
from app.trace.switches import (
    apply_liger,
    liger_loss,
    offload_activations,
    padding_free_inputs,
)
from app.trace.variants import keep_layers

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_CONFIG_META_KEYS = {"architectures", "transformers_version", "auto_map", "model_type", "_name_or_path"}


class UnsupportedStep(ValueError):
    """A request the real-step recipes here do not run (the message says which part and why)."""


@dataclass
class TraceResult:
    """Bytes measured over the traced step (integers), the phase of the peak and what was live then."""

    peak_bytes: int
    peak_rounded_bytes: int
    peak_phase: str
    phases: dict[str, int]
    largest: list[LiveTensor]
    setup_peak_bytes: int
    static: dict[str, int] = field(default_factory=dict)
    trainable_params: int = 0
    all_params: int = 0
    seconds: float = 0.0
    fake: bool = True
    allocator: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak_bytes": self.peak_bytes,
            "peak_rounded_bytes": self.peak_rounded_bytes,
            "peak_phase": self.peak_phase,
            "phases": self.phases,
            "largest": [vars(t) for t in self.largest],
            "setup_peak_bytes": self.setup_peak_bytes,
            "static": self.static,
            "trainable_params": self.trainable_params,
            "all_params": self.all_params,
            "seconds": round(self.seconds, 3),
            "fake": self.fake,
            "allocator": self.allocator,
        }


def _hf_config(req: PlanRequest) -> Any:
    from transformers import AutoConfig

    cfg = model_config(req.model) if isinstance(req.model, str) else req.model.config
    if uses_rules(cfg):
        config = AutoConfig.for_model(cfg["model_type"],
                                      **{k: v for k, v in cfg.items() if k not in _CONFIG_META_KEYS})
    else:  # a model outside the hand-written rules: as the generic path builds it
        from app.models.build import hf_config

        config = hf_config(cfg)
    config.use_cache = False
    config._attn_implementation = attention_name(attention_for(cfg["model_type"], req.training.attn_implementation))
    return config


def _meta_model(req: PlanRequest, config: Any, torch_dtype: torch.dtype,
                layers: Sequence[int] | None = None) -> torch.nn.Module:
    """The transformers model on the meta device (the class the fine-tuner loads: ``AutoModelForCausalLM`` for
    the rules' model types, :func:`app.models.build.model_class` for others, e.g. a vision-language
    ``…ForConditionalGeneration``), keeping only the decoder layers ``layers`` when given
    (:func:`app.trace.variants.keep_layers`); for QLoRA with transformers' own ``replace_with_bnb_linear``."""
    from transformers import AutoModelForCausalLM

    cfg = model_config(req.model) if isinstance(req.model, str) else req.model.config
    with torch.device("meta"):
        if uses_rules(cfg):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        else:
            from app.models.build import model_class

            model = model_class(config, cfg.get("architectures"))._from_config(config, dtype=torch_dtype)
    if layers is not None:
        keep_layers(model, layers)
    if req.quantized:
        from transformers import BitsAndBytesConfig
        from transformers.integrations.bitsandbytes import replace_with_bnb_linear
        from transformers.quantizers.base import get_keys_to_not_convert

        q = req.quantization
        if q.load_in_8bit:
            raise UnsupportedStep("the trace engine runs 4-bit bases; LLM.int8 is estimated analytically")
        bnb_config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=COMPUTE_DTYPES[q.bnb_4bit_compute_dtype],
        )
        replace_with_bnb_linear(model, modules_to_not_convert=get_keys_to_not_convert(model),
                                quantization_config=bnb_config)
        model.is_loaded_in_4bit = True
        model.quantization_method = bnb_config.quant_method  # as quantizers/base.py preprocess_model sets it
    return model


def _materialize(model: torch.nn.Module, req: PlanRequest, torch_dtype: torch.dtype, fake: bool) -> None:
    """Give every meta parameter and buffer real storage (fake or real CPU), quantizing 4-bit layers.

    A bitsandbytes ``Params4bit`` cannot wrap a FakeTensor, so a quantized weight becomes a plain frozen
    Parameter holding the packed data, with the ``quant_state`` bitsandbytes computed (what
    ``Linear4bit.forward`` and ``MatMul4Bit`` read); :func:`bnb_dequantize_patch` lets PEFT's DoRA
    dequantize it. Tied parameters stay tied.
    """
    import bitsandbytes as bnb

    q = req.quantization
    done: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) in done:
                module._parameters[name] = done[id(param)]
                continue
            if isinstance(module, bnb.nn.Linear4bit) and name == "weight":
                w = torch.empty((module.out_features, module.in_features), dtype=torch_dtype)
                if not fake:
                    w.normal_(0, 0.02)
                packed, state = bnb.functional.quantize_4bit(
                    w, blocksize=q.blocksize, compress_statistics=q.bnb_4bit_use_double_quant,
                    quant_type=q.bnb_4bit_quant_type, quant_storage=torch.uint8,
                )
                del w
                new = torch.nn.Parameter(packed, requires_grad=False)
                # the attributes of Params4bit that Linear4bit and PEFT read
                new.quant_state, new.blocksize, new.quant_type = state, q.blocksize, q.bnb_4bit_quant_type
                new.compress_statistics, new.quant_storage = q.bnb_4bit_use_double_quant, torch.uint8
                new.bnb_quantized, new.module = True, module
                module.quant_state = state  # Linear4bit's own copy (survives deepcopy, as in DoRA's init)
            else:
                data = torch.empty(param.shape, dtype=param.dtype)
                if not fake and data.is_floating_point():
                    data.normal_(0, 0.02)
                new = torch.nn.Parameter(data, requires_grad=param.requires_grad)
            done[id(param)] = new
            module._parameters[name] = new
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                module._buffers[name] = torch.zeros(buf.shape, dtype=buf.dtype)


def _optimizer(req: PlanRequest, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Built as HF Trainer builds it on CUDA (foreach for adamw_torch, two weight-decay groups)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = [p for n, p in named if "bias" in n or "norm" in n.lower()]
    decay = [p for n, p in named if not ("bias" in n or "norm" in n.lower())]
    groups = [g for g in ({"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0})
              if g["params"]]
    optim = req.training.optim
    lr = 1e-5
    if optim == "adamw_torch":
        return torch.optim.AdamW(groups, lr=lr, foreach=True)
    if optim == "adamw_torch_fused":
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    if optim == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=req.training.momentum, foreach=True)
    if optim == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False)
    import bitsandbytes as bnb

    bits = 8 if optim in ("adamw_bnb_8bit", "paged_adamw_8bit", "lion_8bit") else 32
    if optim.startswith("lion"):
        optimizer = bnb.optim.Lion(groups, lr=lr, optim_bits=bits)
    else:
        optimizer = bnb.optim.AdamW(groups, lr=lr, optim_bits=bits, is_paged=optim.startswith("paged_"))
    manager = bnb.optim.GlobalOptimManager.get_instance()
    manager.initialize()  # a process-wide singleton: forget overrides of earlier traces
    if bits == 8:  # Trainer.create_optimizer keeps embeddings in 32-bit state
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                manager.register_module_override(module, "weight", {"optim_bits": 32})
    return optimizer


def _own_storage_for_copies(model: torch.nn.Module) -> None:
    """``copy.deepcopy`` of a FakeTensor parameter shares the fake storage; PEFT's ``modules_to_save`` copy is
    a real allocation on a GPU, so give each copied parameter storage of its own."""
    for wrapper in model.modules():
        if type(wrapper).__name__ != "ModulesToSaveWrapper":
            continue
        for copy in wrapper.modules_to_save.values():
            for name, p in list(copy._parameters.items()):
                if p is not None:
                    copy._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype),
                                                                requires_grad=p.requires_grad)


def _real_tables(counter: LiveBytesCounter) -> None:
    """Build bitsandbytes' global dynamic 8-bit map with real tensors (its construction reads values)
    and count it in every trace (it is cached for the life of the process)."""
    import bitsandbytes.functional as bnbf
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        if "dynamic" not in bnbf.name2qmap:
            bnbf.name2qmap["dynamic"] = bnbf.create_dynamic_map()
    counter.track([bnbf.name2qmap["dynamic"]])


def _off_device_states(optimizer: torch.optim.Optimizer, optim: str) -> list[torch.Tensor]:
    """Optimizer state that is not in the CUDA allocator on a GPU: bitsandbytes' paged states (tensors with
    ≥1e5 elements, CUDA unified memory) and non-fused AdamW's ``step`` (a host tensor)."""
    out = []
    for state in optimizer.state.values():
        for key, t in state.items():
            if not isinstance(t, torch.Tensor):
                continue
            paged = optim.startswith("paged_") and key in ("state1", "state2") and t.numel() >= 100_000
            host_step = optim == "adamw_torch" and key == "step"
            if paged or host_step:
                out.append(t)
    return out


def _static(model: torch.nn.Module, optimizer: torch.optim.Optimizer, full: bool) -> dict[str, int]:
    seen: dict[int, torch.UntypedStorage] = {}  # by identity: meta storages all have data_ptr 0
    out = {"weights": 0, "quantization_constants": 0, "adapter_weights": 0, "optimizer_states": 0}

    def add(key: str, t: Any) -> None:
        if isinstance(t, torch.Tensor) and id(st := t.untyped_storage()) not in seen:
            seen[id(st)] = st
            out[key] += st.nbytes()

    for name, p in model.named_parameters():
        added = not full and ("lora_" in name or "modules_to_save" in name)
        add("adapter_weights" if added else "weights", p)
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            for t in (qs.absmax, qs.code, qs.offset, *(
                    (qs.state2.absmax, qs.state2.code) if qs.nested else ())):
                add("quantization_constants", t)
    for state in optimizer.state.values():
        for v in state.values():
            add("optimizer_states", v)
    return out


def run_trace(req: PlanRequest, *, fake: bool = True, steps: int = 2, seed: int = 0,
              layers: Sequence[int] | None = None) -> TraceResult:
    """Trace ``steps`` training steps of ``req`` and return the last one's memory (bytes); ``layers``: keep only
    these decoder layers of the model (the small variants :mod:`app.models.peak_fit` traces)."""
    if req.torch_version != "2.13":
        raise UnsupportedStep("the trace engine runs the installed torch 2.13; torch 2.0's optimizer step is "
                              "estimated analytically")
    if req.transformers_version != "5.24":
        raise UnsupportedStep("the trace engine runs the installed transformers 5.24; the transformers 4.57 "
                              "module tree (per-expert MoE linears) is estimated analytically")
    from peft import LoraConfig
    from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    register_attention()
    dt = dtypes_for(req)
    torch_dtype, compute = TORCH_DTYPES[dt.weights], TORCH_DTYPES[dt.compute]
    config = _hf_config(req)
    torch.manual_seed(seed)
    counter = LiveBytesCounter(transient_rules() if req.quantized else None)
    tr = req.training
    framework = recipe(req)
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        model = _meta_model(req, config, torch_dtype, layers)
        if fake:
            # Fake CPU tensors: shapes, dtypes and storages without data; CPU autocast applies to them.
            stack.enter_context(fake_swap_tensors())
            # bitsandbytes builds its 8-bit code tables with data-dependent ops (.tolist()): those few
            # real tables are made outside the fake mode (_real_tables) and may meet fake tensors.
            stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        for context in framework.contexts():  # the framework's CUDA kernels, below the counter
            stack.enter_context(context)
        stack.enter_context(counter)
        stack.enter_context(cuda_dropout())
        stack.enter_context(cuda_autocast_query())
        stack.enter_context(bnb_dequantize_patch())
        stack.enter_context(grouped_mm_for_any_dtype())
        _real_tables(counter)
        _materialize(model, req, torch_dtype, fake)
        model = framework.before_adapters(model, req)
        lora = req.lora
        lora_config = None if req.method == "full" else LoraConfig(
            r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
            target_modules=lora.target_modules, target_parameters=lora.target_parameters,
            layers_to_transform=lora.layers_to_transform, bias=lora.bias,
            modules_to_save=lora.modules_to_save, use_rslora=lora.use_rslora, use_dora=req.uses_dora,
        )
        model = framework.adapt(model, req, lora_config)
        if fake:
            _own_storage_for_copies(model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if tr.gradient_checkpointing:
            reentrant = tr.gradient_checkpointing_kwargs.use_reentrant
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": bool(reentrant)})
        liger = tr.use_liger_kernel and config.model_type in LIGER_MODEL_TYPES
        if liger:
            apply_liger(base)
        model.train()
        head = base.get_output_embeddings()
        head.register_forward_hook(lambda *_: counter.set_phase("loss"))
        with unset_fake_temporarily():  # bitsandbytes fills its 8-bit maps (data-dependent) in __init__
            optimizer = _optimizer(req, model)
        params = [p for p in model.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in params)
        all_params = sum(p.numel() for p in model.parameters())
        # HF Trainer bf16=True / fp16=True always runs the forward under autocast (accelerate native_amp)
        autocast = torch.autocast("cpu", dtype=compute) if dt.compute != "fp32" else nullcontext()
        setup_peak = counter.peak
        excluded: list[torch.Tensor] = []
        for step in range(steps):
            # Setup leaves reference cycles (bitsandbytes weights point at their module; DoRA deep-copies
            # layers); collect them so that the measured step does not depend on when Python's GC runs.
            gc.collect()
            if step == steps - 1:
                counter.reset_peak()
            vocab = config.get_text_config().vocab_size
            if padding_free(req):
                inputs = padding_free_inputs(tr.micro_batch_size, tr.seq_len, vocab)
            else:
                inputs = {"input_ids": torch.randint(0, vocab, (tr.micro_batch_size, tr.seq_len))}
            input_ids = inputs["input_ids"]
            counter.set_phase("forward")
            if step == 0:
                # the first matmul makes cuBLAS allocate one workspace per handle (forward and backward
                # threads) through the caching allocator, kept for the process (CublasHandlePool.cpp)
                for _ in range(2):
                    counter.inject(cublas_workspace_bytes(gpu(req.hardware.gpu).arch) // 2)
            # gradient accumulation: every micro-batch after the first runs beside the accumulated gradients, and
            # all of them alike, so two stand for any number (HF Trainer divides each loss by the count: a scalar)
            for _ in range(min(tr.gradient_accumulation_steps, 2)):
                counter.set_phase("forward")
                offload = offload_activations(model, counter.host) if tr.activation_offloading else nullcontext()
                with autocast, offload:
                    if liger:  # Liger's lce_forward replaces the framework's loss path: no logits to convert
                        loss = liger_loss(base, labels=input_ids, on_loss=lambda: counter.set_phase("loss"),
                                          **inputs)
                    else:
                        loss = framework.loss(model, inputs, req)
                counter.set_phase("backward")
                loss.backward()
                del loss
            counter.set_phase("optimizer")
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # per-tensor norms: scalars only
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step == 0:
                excluded = _off_device_states(optimizer, req.training.optim)
                counter.exclude(excluded)
            del input_ids, inputs
        static = _static(model, optimizer, req.method == "full")
        static["optimizer_states"] -= sum(t.untyped_storage().nbytes() for t in excluded)
    allocator = _replay_stream(counter, req)
    return TraceResult(
        peak_bytes=counter.peak,
        peak_rounded_bytes=counter.peak_rounded,
        peak_phase=counter.snapshot.phase,
        phases={name: s.peak_bytes for name, s in counter.phases.items()},
        largest=counter.snapshot.largest,
        setup_peak_bytes=setup_peak,
        static=static,
        trainable_params=trainable,
        all_params=all_params,
        seconds=time.perf_counter() - started,
        fake=fake,
        allocator=allocator,
    )


def _replay_stream(counter: LiveBytesCounter, req: PlanRequest) -> dict[str, Any]:
    """The recorded allocation stream (paged optimizer states left out) replayed through the allocator."""
    stream = counter.stream
    index = stream.index_map()
    marks = {index[i]: name for i, name in sorted(stream.marks.items())}
    reset_at = index[stream.reset_at] if stream.reset_at is not None else None
    return trace_report(stream.events(), marks, reset_at, req)
