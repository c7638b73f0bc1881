"""Measure one real adapter training step on a device (CUDA: the allocator's own counters; CPU: live storages).

The step is the trace engine's recipe (``app/trace/engine.py``) on real weights: a random-initialised model
from the config (or ``from_pretrained(model_dir)``), bitsandbytes 4-bit quantization through transformers'
``BitsAndBytesConfig`` for QLoRA/QDoRA, ``prepare_model_for_kbit_training``, ``get_peft_model``, non-reentrant
gradient checkpointing, the optimizer as HF Trainer builds it, then ``warmup_steps`` + ``measure_steps``
steps of forward (with labels, under autocast) → fp32 logits copy → backward (two micro-batches per step when
``gradient_accumulation_steps`` > 1) → ``clip_grad_norm_`` → step → ``zero_grad(set_to_none=True)``. Peak
statistics are reset after the model and adapter are set up.

On CPU the bytes come from :class:`app.trace.counter.LiveBytesCounter` with the trace engine's CUDA stand-ins
(FlashAttention/SDPA allocations, bool dropout masks, bitsandbytes' dequantize fallback scratch) so the number
is the one a GPU's ``max_memory_allocated`` would show minus cuBLAS workspaces; only tiny models are allowed.

torch and friends are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import gc
import importlib.metadata
import shutil
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from typing import Any

from app.calibration.alloc_replay import replay_snapshot, replay_stream
from app.calibration.devices import measured_device
from app.calibration.microbench import matmul_microbench
from app.core.architectures import attention_for
from app.core.precision import dtypes_for
from app.core.request import PlanRequest

Progress = Callable[[float, str], None]

CPU_MAX_PARAMS = 50_000_000
MAX_WARMUP_STEPS = 10
MAX_MEASURE_STEPS = 20
SIXTEEN_BIT_TWIN = {"qlora": "lora", "qdora": "dora"}


class _Phase:
    """Where the run is (for OOM reports and progress)."""

    def __init__(self) -> None:
        self.where = "setup"


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def environment(device: str) -> dict[str, Any]:
    """Device name, driver, CUDA and library versions."""
    import platform

    import torch

    env: dict[str, Any] = {"device": device, "versions": _versions(), "python": platform.python_version()}
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        env.update(gpu_name=props.name, gpu_total_bytes=props.total_memory,
                   compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
        driver = None
        if shutil.which("nvidia-smi"):
            try:
                proc = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader",
                                       f"--id={index}"], capture_output=True, text=True, timeout=10, check=False)
                driver = proc.stdout.strip() or None
            except (OSError, subprocess.SubprocessError):
                driver = None
        env["driver"] = driver
    else:
        env.update(cpu=platform.processor() or platform.machine(), torch_threads=torch.get_num_threads())
    return env


def _hf_config(req: PlanRequest, device: str, notes: list[str]) -> Any:
    """The model's transformers config; attention is the real kernel on CUDA, the trace's stand-in on CPU."""
    import importlib.util

    from app.trace.cuda_kernels import attention_name, register_attention
    from app.trace.engine import _hf_config as trace_config

    config = trace_config(req)
    attn = attention_for(config.model_type, req.training.attn_implementation)
    if device.startswith("cuda"):
        if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            notes.append("flash_attn is not installed: measured with sdpa instead of flash_attention_2")
            attn = "sdpa"
        config._attn_implementation = attn
    else:
        register_attention()
        config._attn_implementation = attention_name(attn)
    return config


def _bnb_config(req: PlanRequest) -> Any:
    from transformers import BitsAndBytesConfig

    from app.trace.engine import COMPUTE_DTYPES

    q = req.quantization
    if q.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=q.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=COMPUTE_DTYPES[q.bnb_4bit_compute_dtype],
    )


def _random_model(config: Any, device: str, torch_dtype: Any) -> Any:
    """A model with random weights from ``config``, initialised on ``device`` (no download)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=torch_dtype)


def _source_checkpoint(config: Any, device: str, torch_dtype: Any, directory: str) -> None:
    """Save random weights from ``config`` to ``directory``, for QLoRA/QDoRA to load quantized as users do.

    The weights are initialised on ``device`` (on a GPU this takes seconds where the CPU takes minutes for a
    7B) and freed before the measured load begins.
    """
    source = _random_model(config, device, torch_dtype)
    source.save_pretrained(directory)
    del source
    _free(device)


def _build_model(req: PlanRequest, config: Any, device: str, torch_dtype: Any, model_dir: str | None) -> Any:
    """``from_pretrained(model_dir)`` (quantized through ``BitsAndBytesConfig`` for QLoRA/QDoRA, the path users
    take), or random weights from the config built on ``device`` when there is no checkpoint."""
    from transformers import AutoModelForCausalLM

    if model_dir is not None:
        kwargs: dict[str, Any] = {"dtype": torch_dtype, "device_map": {"": device},
                                  "attn_implementation": config._attn_implementation}
        if req.quantized:
            kwargs["quantization_config"] = _bnb_config(req)
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    else:
        model = _random_model(config, device, torch_dtype)
    model.config.use_cache = False
    return model


def _model_tensors(model: Any) -> list[Any]:
    """Every storage the model holds: parameters, buffers, bitsandbytes quantization state."""
    out = [*model.parameters(), *model.buffers()]
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            out += [qs.absmax, qs.code, qs.offset]
            if qs.nested:
                out += [qs.state2.absmax, qs.state2.code]
    return out


def _wrap(req: PlanRequest, model: Any) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if req.quantized and req.quantization.prepare_kbit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if req.method == "full":
        model.requires_grad_(True)
        return model
    lora = req.lora
    return get_peft_model(model, LoraConfig(
        r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
        target_modules=lora.target_modules, target_parameters=lora.target_parameters,
        layers_to_transform=lora.layers_to_transform, bias=lora.bias,
        modules_to_save=lora.modules_to_save, use_rslora=lora.use_rslora, use_dora=req.uses_dora,
    ))


def _optimizer(req: PlanRequest, model: Any) -> Any:
    try:
        from app.trace.engine import _optimizer as trainer_optimizer
    except ImportError:  # pragma: no cover - the trace engine ships with the app
        import torch

        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=1e-5)
    return trainer_optimizer(req, model)


def _linear_shapes(model: Any, top: int = 3) -> list[tuple[int, int]]:
    """The largest (out_features, in_features) of the model's linear layers (4-bit ones included)."""
    shapes: set[tuple[int, int]] = set()
    for module in model.modules():
        out_f, in_f = getattr(module, "out_features", None), getattr(module, "in_features", None)
        if isinstance(out_f, int) and isinstance(in_f, int) and type(module).__name__ in ("Linear", "Linear4bit"):
            shapes.add((out_f, in_f))
    return sorted(shapes, key=lambda s: s[0] * s[1], reverse=True)[:top]


def _run_steps(req: PlanRequest, device: str, warmup_steps: int, measure_steps: int, model_dir: str | None,
               progress: Progress, phase: _Phase, span: tuple[float, float]) -> dict[str, Any]:
    """Build, set up and step one configuration; the bytes and times of its measured steps."""
    import torch

    from app.trace.counter import LiveBytesCounter
    from app.trace.cuda_kernels import bnb_dequantize_patch, cuda_dropout, grouped_mm_for_any_dtype, transient_rules
    from app.trace.engine import TORCH_DTYPES, _off_device_states, _real_tables

    cuda = device.startswith("cuda")
    lo, hi = span
    notes: list[str] = []
    dt = dtypes_for(req)
    torch_dtype, compute = TORCH_DTYPES[dt.weights], TORCH_DTYPES[dt.compute]
    tr = req.training
    torch.manual_seed(0)
    phase.where = "setup (model load)"
    progress(lo, f"{req.method}: building the model on {device}")
    config = _hf_config(req, device, notes)
    counter = None if cuda else LiveBytesCounter(transient_rules() if req.quantized else None)
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        if req.quantized and model_dir is None:
            # no checkpoint: random weights saved first, then loaded with BitsAndBytesConfig (quantized while
            # loading, as users load a checkpoint); before the allocator history starts, so it holds the load alone
            model_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="peft-planner-calib-"))
            _source_checkpoint(config, device, torch_dtype, model_dir)
        if cuda:
            torch.cuda.set_device(torch.device(device))
            # an empty allocator, then its history from the first allocation on, so that the snapshot can be
            # replayed through the allocator simulator (app/core/alloc_snapshot.py)
            torch.cuda.empty_cache()
            torch.cuda.memory._record_memory_history(enabled="all", context=None, stacks="python",
                                                     clear_history=True)
            torch.cuda.reset_peak_memory_stats()
        model = _build_model(req, config, device, torch_dtype, model_dir)
        if counter is not None:
            # CPU: count what the model holds, then every storage the step makes (the trace's stand-ins for
            # CUDA kernels that allocate differently from their CPU versions)
            stack.enter_context(counter)
            stack.enter_context(cuda_dropout())
            stack.enter_context(bnb_dequantize_patch())
            stack.enter_context(grouped_mm_for_any_dtype())
            counter.track(_model_tensors(model), op="model")
            _real_tables(counter)
        phase.where = "setup (adapter)"
        model = _wrap(req, model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if tr.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        optimizer = _optimizer(req, model)
        params = [p for p in model.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in params)
        all_params = sum(p.numel() for p in model.parameters())
        shapes = _linear_shapes(model)
        autocast = torch.autocast("cuda" if cuda else "cpu", dtype=compute) if dt.compute != "fp32" else nullcontext()
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            setup_peak = torch.cuda.max_memory_allocated()
            setup_allocated = torch.cuda.memory_allocated()
        else:
            setup_peak, setup_allocated = counter.peak, counter.live
        head = base.get_output_embeddings()
        if counter is not None:
            head.register_forward_hook(lambda *_: counter.set_phase("loss"))
        times: list[float] = []
        phase_peaks: dict[str, int] = {}
        excluded: list[Any] = []
        total = warmup_steps + measure_steps

        def mark(name: str) -> None:
            """Close the previous phase's high-water mark (CUDA) and open ``name``."""
            if cuda:
                prev = phase.where.rsplit(", ", 1)[-1]
                if prev in ("forward", "backward", "optimizer") and measuring:
                    phase_peaks[prev] = max(phase_peaks.get(prev, 0), torch.cuda.max_memory_allocated())
                    reserved_peak[0] = max(reserved_peak[0], torch.cuda.max_memory_reserved())
                torch.cuda.reset_peak_memory_stats()
            elif counter is not None:
                counter.set_phase(name)
            phase.where = f"{label}, {name}"

        # gradient accumulation: every micro-batch after the first holds the same accumulated gradients, so a step
        # runs two of them (as the trace engine does) and its time covers both
        micro_batches = min(tr.gradient_accumulation_steps, 2)
        measuring = False
        reserved_peak = [0]  # max_memory_reserved over the measured steps (peak stats are reset per phase)
        for step in range(total):
            measuring = step >= warmup_steps
            label = f"warm-up step {step + 1}" if not measuring else f"measured step {step - warmup_steps + 1}"
            progress(lo + (hi - lo) * step / total, f"{req.method}: {label} of {total}")
            gc.collect()  # setup leaves reference cycles (see the trace engine)
            if step == warmup_steps:
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                else:
                    counter.reset_peak()
            input_ids = torch.randint(0, config.vocab_size, (tr.micro_batch_size, tr.seq_len), device=device)
            if cuda:
                start_evt, end_evt = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start_evt.record()
            started = time.perf_counter()
            for _ in range(micro_batches):  # a later micro-batch runs beside the accumulated gradients
                mark("forward")
                with autocast:
                    out = model(input_ids=input_ids, labels=input_ids)
                if dt.compute != "fp32":
                    logits32 = out.logits.float()  # accelerate's convert_outputs_to_fp32 under HF Trainer
                    del logits32
                loss = out.loss
                del out
                mark("backward")
                loss.backward()
                del loss
            mark("optimizer")
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                end_evt.record()
                torch.cuda.synchronize()
                phase_peaks_now = torch.cuda.max_memory_allocated()
                if measuring:
                    phase_peaks["optimizer"] = max(phase_peaks.get("optimizer", 0), phase_peaks_now)
                    reserved_peak[0] = max(reserved_peak[0], torch.cuda.max_memory_reserved())
                torch.cuda.reset_peak_memory_stats()
                elapsed = start_evt.elapsed_time(end_evt) / 1000
            else:
                elapsed = time.perf_counter() - started
            if step == 0 and counter is not None:
                excluded = _off_device_states(optimizer, tr.optim)
                counter.exclude(excluded)
            phase.where = f"{label}, done"
            if measuring:
                times.append(elapsed)
            del input_ids
        step_time = statistics.median(times)
        tokens = tr.micro_batch_size * tr.seq_len * micro_batches
        out_d: dict[str, Any] = {
            "trainable_params": trainable,
            "all_params": all_params,
            "setup_peak_bytes": setup_peak,
            "setup_allocated_bytes": setup_allocated,
            "step_times_s": [round(t, 6) for t in times],
            "step_time_s": round(step_time, 6),
            "tokens_per_s": round(tokens / step_time, 3) if step_time > 0 else None,
            "linear_shapes": shapes,
            "notes": notes,
        }
        if cuda:
            snapshot = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
            out_d["allocator_replay"] = replay_snapshot(snapshot, torch.cuda.current_device())
            free, total_mem = torch.cuda.mem_get_info()
            peak = max(phase_peaks.values()) if phase_peaks else 0
            out_d.update(
                peak_allocated_bytes=peak,
                peak_reserved_bytes=reserved_peak[0],
                device_used_bytes=total_mem - free,
                device_total_bytes=total_mem,
                peak_phase=max(phase_peaks, key=phase_peaks.get) if phase_peaks else None,
                phases=phase_peaks,
                counter="torch.cuda.max_memory_allocated",
            )
        else:
            out_d.update(
                peak_allocated_bytes=counter.peak,
                peak_rounded_bytes=counter.peak_rounded,
                peak_reserved_bytes=None,
                device_used_bytes=None,
                peak_phase=counter.snapshot.phase,
                phases={name: s.peak_bytes for name, s in counter.phases.items()},
                largest=[vars(t) for t in counter.snapshot.largest[:8]],
                allocator_replay=replay_stream(counter),
                counter="app.trace.counter.LiveBytesCounter (CPU, CUDA kernel stand-ins)",
            )
        del model, optimizer, params, base, head
    _free(device)
    return out_d


def calibrate(req: PlanRequest, device: str, warmup_steps: int, measure_steps: int, model_dir: str | None,
              progress: Progress | None = None) -> dict[str, Any]:
    """Run the real step of ``req`` on ``device`` and return what was measured (plain JSON-able data).

    ``{"status": "done", ...}`` or ``{"status": "oom", "does_not_fit_at": "<phase>", ...}``.
    """
    import torch
    from transformers.utils import logging as hf_logging

    from app.trace.engine import TORCH_DTYPES  # noqa: F401  (fails early when the step libraries are missing)

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    report = progress or (lambda _pct, _text: None)
    if not 0 <= warmup_steps <= MAX_WARMUP_STEPS or not 1 <= measure_steps <= MAX_MEASURE_STEPS:
        raise ValueError(f"warmup_steps must be 0..{MAX_WARMUP_STEPS} and measure_steps 1..{MAX_MEASURE_STEPS}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch.cuda.is_available() is false")
    started = time.perf_counter()
    env = environment(device)
    quantized = req.quantized
    span_main = (0.0, 55.0) if quantized else (0.0, 95.0)
    phase = _Phase()
    result: dict[str, Any] = {"device": device, "environment": env, "warmup_steps": warmup_steps,
                              "measure_steps": measure_steps, "kind": "cuda" if device.startswith("cuda") else "cpu",
                              "measured_device": measured_device(env)}
    try:
        main = _run_steps(req, device, warmup_steps, measure_steps, model_dir, report, phase, span_main)
    except Exception as exc:
        if not _is_oom(exc):
            raise
        del exc
        _free(device)
        result.update(status="oom", does_not_fit_at=phase.where, seconds=round(time.perf_counter() - started, 3))
        report(100.0, f"out of memory at {phase.where}")
        return result
    result.update(status="done", **main)
    if quantized:
        twin = req.model_copy(update={"method": SIXTEEN_BIT_TWIN[req.method]})
        sub = _Phase()
        try:
            base16 = _run_steps(twin, device, warmup_steps, measure_steps, model_dir, report, sub, (55.0, 85.0))
            result["sixteen_bit_base"] = {
                "method": twin.method, "peak_allocated_bytes": base16["peak_allocated_bytes"],
                "step_time_s": base16["step_time_s"], "tokens_per_s": base16["tokens_per_s"],
            }
            result["otf_dequant_slowdown"] = (round(main["step_time_s"] / base16["step_time_s"], 3)
                                              if base16["step_time_s"] else None)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            del exc
            _free(device)
            result["sixteen_bit_base"] = {"method": twin.method, "status": "oom", "does_not_fit_at": sub.where}
            result["otf_dequant_slowdown"] = None
        report(88.0, "4-bit vs 16-bit matmul microbenchmark")
        result["matmul_microbench"] = matmul_microbench(req, device, [tuple(s) for s in main["linear_shapes"]])
        _free(device)
    if result["kind"] == "cpu":
        result["notes"].append("CPU: step times include the live-storage counter's Python overhead; the slowdown "
                               "and the matmul microbenchmark are CPU kernels, not a GPU prediction")
    result["seconds"] = round(time.perf_counter() - started, 3)
    report(100.0, "done")
    return result
