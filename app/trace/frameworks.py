"""What each training framework does to the model and the step, for the trace engine (docs/frameworks.md).

:func:`recipe` gives the engine three hooks for ``training.framework``: ``before_adapters`` (between
loading/quantizing and PEFT), ``adapt`` (PEFT, or the framework's own trainer set-up) and ``loss`` (the forward and
the loss of one micro-batch), plus ``contexts`` (stand-ins for CUDA-only kernels the framework calls).

- ``hf-trainer``: transformers ``Trainer`` with PEFT's ``prepare_model_for_kbit_training`` for k-bit bases
  (when ``quantization.prepare_kbit``); the model's own loss and accelerate's fp32 copy of the logits.
- ``trl``: TRL 1.16.0 (the ``trl`` extra) runs its own code: a real ``SFTTrainer`` is built on the model
  (``trl/trainer/sft_trainer.py`` ``__init__``: PEFT, input grads, the k-bit bf16 cast, ``add_fused_lm_head``),
  and the step calls its ``compute_loss`` (TRL's ``ChunkedLogProbFunction``, ``kernels/chunked_logprob.py``).
- ``axolotl`` 0.18.0, ``llama-factory`` 0.9.5 (commit ff6d4d1), ``ms-swift`` 4.5.2: they pin transformers,
  PEFT and TRL releases other than this project's (docs/frameworks.md), so their preparation is replayed
  from their source, cited per hook.
"""

from __future__ import annotations

import importlib.util
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from app.core.request import PlanRequest

Model = torch.nn.Module


@dataclass(frozen=True)
class Recipe:
    """The engine's hooks for one framework."""

    before_adapters: Callable[[Model, PlanRequest], Model]
    adapt: Callable[[Model, PlanRequest, Any], Model]  # (model, request, PEFT LoraConfig or None for full)
    loss: Callable[[Model, dict[str, torch.Tensor], PlanRequest], torch.Tensor]
    contexts: Callable[[], list[AbstractContextManager[Any]]] = field(default=lambda: [])


def _no_change(model: Model, req: PlanRequest) -> Model:
    return model


def _peft_adapt(model: Model, req: PlanRequest, lora_config: Any) -> Model:
    """PEFT ``get_peft_model`` (adapters fp32: ``autocast_adapter_dtype=True``); full fine-tuning unfreezes all."""
    if lora_config is None:
        return model.requires_grad_(True)
    from peft import get_peft_model

    return get_peft_model(model, lora_config)


def _kbit_prepare(model: Model, req: PlanRequest) -> Model:
    """PEFT ``prepare_model_for_kbit_training`` (``utils/other.py``): every non-quantized fp16/bf16 parameter
    to fp32, everything frozen (the HF recipe's choice; checkpointing is enabled by the engine)."""
    if not (req.quantized and req.quantization.prepare_kbit):
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _model_loss(model: Model, inputs: dict[str, torch.Tensor], req: PlanRequest) -> torch.Tensor:
    """HF ``Trainer.compute_loss``: the model's own loss from ``labels``; accelerate's ``convert_outputs_to_fp32``
    (bf16/fp16 mixed precision) makes an fp32 copy of the logits. ``inputs``: ``input_ids`` (the labels too) and,
    padding-free, ``position_ids``."""
    out = model(labels=inputs["input_ids"], **inputs)
    if out.logits.dtype != torch.float32:
        logits32 = out.logits.float()
        del logits32
    return out.loss


# --- axolotl 0.18.0 --------------------------------------------------------------------------------------------


def _axolotl_before_adapters(model: Model, req: PlanRequest) -> Model:
    """axolotl ``src/axolotl/loaders/model.py`` (v0.18.0) ``_configure_embedding_dtypes``: for a k-bit base with
    a lora/qlora adapter ``_prepare_model_for_quantization`` runs PEFT's ``prepare_model_for_kbit_training``
    (all non-quantized parameters to fp32; lines 988-1023), then, because an adapter is set (``needs_fa2_dtype``),
    ``_convert_embedding_modules_dtype(..., dist_dtype=cfg.torch_dtype)`` moves every module with "norm" in its
    name and the embedding modules (``embed_tokens``, ``lm_head``) back to the load dtype (lines 1025-1045)."""
    if not req.quantized:
        return model
    from peft import prepare_model_for_kbit_training

    from app.core.precision import dtypes_for
    from app.trace.engine import TORCH_DTYPES

    load_dtype = TORCH_DTYPES[dtypes_for(req).weights]
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    embedding_modules = ("embed_tokens", "lm_head", "wte", "wpe")
    for name, module in model.named_modules():
        if "norm" in name or (any(m in name for m in embedding_modules) and hasattr(module, "weight")):
            module.to(load_dtype)
    return model


# --- ms-swift 4.5.2 --------------------------------------------------------------------------------------------


def _swift_loss(model: Model, inputs: dict[str, torch.Tensor], req: PlanRequest) -> torch.Tensor:
    """ms-swift ``swift/trainers/seq2seq_trainer.py`` (v4.5.2) ``compute_loss``: the model's own loss (labels left
    in the inputs), then ``_compute_acc`` (``swift/trainers/mixin.py``) takes ``logits.argmax(dim=-1)`` while the
    logits are alive (an int64 (b, s) tensor) for the token-accuracy metric."""
    input_ids = inputs["input_ids"]
    out = model(labels=input_ids, **inputs)
    preds = out.logits.argmax(dim=-1)
    acc = (preds[:, :-1] == input_ids[:, 1:]).float().mean()
    del preds, acc
    if out.logits.dtype != torch.float32:
        logits32 = out.logits.float()
        del logits32
    return out.loss


# --- TRL 1.16.0 ------------------------------------------------------------------------------------------------


def _trl_adapt(model: Model, req: PlanRequest, lora_config: Any) -> Model:
    """TRL's own ``SFTTrainer.__init__`` (``trl/trainer/sft_trainer.py``, 1.16.0) on the model: with a
    ``peft_config`` it calls ``get_peft_model`` (no ``prepare_model_for_kbit_training``: TRL never calls it),
    ``model.enable_input_require_grads()`` under checkpointing, casts a k-bit base's trainable parameters to
    bf16 except DoRA's magnitude, and installs ``add_fused_lm_head`` (log_probs, entropy, is_top1). The trainer
    gets a two-row dataset and a word-level tokenizer built in memory (no Hub access); ``bf16`` and the
    optimizer are left to the engine (the step's autocast and HF Trainer's optimizer). Returns ``trainer.model``.
    """
    import tempfile
    import warnings

    import datasets
    from datasets import Dataset
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    if lora_config is None:
        model.requires_grad_(True)
    words = {f"w{i}": i for i in range(8)} | {"<unk>": 8, "<eos>": 9, "<pad>": 10}
    tokenizer = Tokenizer(WordLevel(words, unk_token="<unk>"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer_fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>",
                                             unk_token="<unk>")
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the two-row dataset's map() calls
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL's deprecation notes (gradient_checkpointing in transformers 5)
        args = SFTConfig(output_dir=out, report_to=[], use_cpu=True, bf16=False,
                         gradient_checkpointing=req.training.gradient_checkpointing, max_length=req.training.seq_len,
                         per_device_train_batch_size=req.training.micro_batch_size, save_strategy="no")
        trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer_fast, peft_config=lora_config,
                             train_dataset=Dataset.from_dict({"text": ["w1 w2 w3", "w4 w5"]}))
    if bars:
        datasets.enable_progress_bars()
    trainer.accelerator.gather_for_metrics = _gather_metric  # type: ignore[method-assign]
    trainer.model.planner_trainer = trainer  # what _trl_loss calls compute_loss on
    return trainer.model


def _gather_metric(t: torch.Tensor) -> torch.Tensor:
    """``Accelerator.gather_for_metrics`` of the logging scalars ``SFTTrainer.compute_loss`` reads back with
    ``.item()`` and ``> 0`` (one process gathers nothing). A FakeTensor cannot answer those, so a fake scalar
    comes back as a constant FakeTensorMode can read (``torch.tensor`` made in the mode); real ones unchanged."""
    from torch._subclasses.fake_tensor import is_fake

    return torch.tensor(1, dtype=t.dtype) if is_fake(t) else t


def _trl_loss(model: Model, inputs: dict[str, torch.Tensor], req: PlanRequest) -> torch.Tensor:
    """TRL's own ``SFTTrainer.compute_loss`` on the batch its ``DataCollatorForLanguageModeling`` makes for unpadded
    rows of ``seq_len`` tokens: ``input_ids``, ``labels`` and ``position_ids`` (the collator's
    ``return_position_ids``, default on; padding-free: restarting per document, as ``inputs`` has them)."""
    input_ids = inputs["input_ids"]
    b, s = input_ids.shape
    position_ids = inputs.get("position_ids", torch.arange(s).unsqueeze(0).expand(b, s))
    return model.planner_trainer.compute_loss(model, {"input_ids": input_ids, "labels": input_ids,
                                                      "position_ids": position_ids})


@contextmanager
def _triton_on_cuda() -> Iterator[None]:
    """TRL's chunked log-probability kernel as it runs on a CUDA GPU.

    On CUDA (``_use_triton``) TRL scores only the positions with a label (``hidden_states[mask]``) and folds each
    ``[4096, 32768]`` logits tile with Triton kernels that keep their work in registers, and
    ``_addmm_fp32`` accumulates with ``torch.addmm(..., out_dtype=torch.float32)`` (no fp32 copies of its
    inputs). On CPU the same folds run as torch ops on tile-sized temporaries. Here the folds and the fp32
    accumulation run TRL's torch versions with the memory counter paused (they write into existing tensors only),
    and ``nonzero`` of a fake mask (all labels valid in the traced batch) returns every position.
    """
    import trl.kernels.chunked_logprob as kernels
    import trl.trainer.utils as trl_utils

    class _Launch:
        def __init__(self, fold: Callable[..., None]) -> None:
            self.fold = fold

        def __getitem__(self, grid: Any) -> Callable[..., None]:
            return lambda *args, **kwargs: _uncounted(self.fold, *args, **kwargs)

    saved = (kernels._use_triton, trl_utils._use_triton, kernels._addmm_fp32,
             getattr(kernels, "_forward_kernel", None), getattr(kernels, "_backward_kernel", None))
    original_addmm = kernels._addmm_fp32
    kernels._use_triton = trl_utils._use_triton = lambda device: True
    kernels._forward_kernel = _Launch(kernels._forward_tile)
    kernels._backward_kernel = _Launch(kernels._backward_tile)
    kernels._addmm_fp32 = lambda acc, a, b: _uncounted(original_addmm, acc, a, b)
    kernels.triton = types.SimpleNamespace(cdiv=lambda a, b: -(-a // b))
    try:
        with _AllValidNonzero():
            yield
    finally:
        (kernels._use_triton, trl_utils._use_triton, kernels._addmm_fp32,
         kernels._forward_kernel, kernels._backward_kernel) = saved
        del kernels.triton


def _uncounted(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` with the innermost dispatch mode (the trace's memory counter) popped: a GPU kernel that keeps
    its temporaries in registers and writes into existing tensors."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode, _pop_mode_temporarily

    from app.trace.counter import LiveBytesCounter

    if not isinstance(_get_current_dispatch_mode(), LiveBytesCounter):
        return fn(*args, **kwargs)
    with _pop_mode_temporarily():
        return fn(*args, **kwargs)


class _AllValidNonzero(torch.utils._python_dispatch.TorchDispatchMode):
    """Boolean-mask indexing of FakeTensors (``hidden_states[mask]`` and its backward): every position is selected
    (the traced batch's labels are its input ids, so no label is -100 and ``labels != -100`` is all true), so the
    mask becomes the long index of every position before the op runs. Real tensors run unchanged."""

    OPS = ("nonzero.default", "index.Tensor", "index_put.default", "index_put_.default", "_index_put_impl_.default")

    def __torch_dispatch__(self, func: Any, types_: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        from torch._subclasses.fake_tensor import is_fake

        kwargs = kwargs or {}
        name = f"{func.overloadpacket.__name__}.{func._overloadname}" if hasattr(func, "overloadpacket") else ""
        if name == "nonzero.default" and is_fake(args[0]):
            return _every_position(args[0].shape)
        if name in self.OPS[1:] and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and is_fake(i)
                                        for i in args[1]):
            indices: list[Any] = []
            for i in args[1]:
                if isinstance(i, torch.Tensor) and i.dtype == torch.bool and is_fake(i):
                    indices.extend(_every_position(i.shape).unbind(-1))
                else:
                    indices.append(i)
            args = (args[0], indices, *args[2:])
        return func(*args, **kwargs)


def _every_position(shape: torch.Size) -> torch.Tensor:
    """The (numel, ndim) int64 coordinates ``nonzero`` returns for an all-true mask of ``shape``."""
    grids = torch.meshgrid(*(torch.arange(n) for n in shape), indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=-1)


# --- the table -------------------------------------------------------------------------------------------------

RECIPES: dict[str, Recipe] = {
    "hf-trainer": Recipe(_kbit_prepare, _peft_adapt, _model_loss),
    "trl": Recipe(_no_change, _trl_adapt, _trl_loss, lambda: [_triton_on_cuda()]),
    "axolotl": Recipe(_axolotl_before_adapters, _peft_adapt, _model_loss),
    # LLaMA-Factory src/llamafactory/model/adapter.py init_adapter: no prepare_model_for_kbit_training, trainable
    # parameters cast to fp32 (cast_trainable_params_to_fp32, not pure_bf16); model_utils/checkpointing.py
    # prepare_model_for_training: upcast_layernorm and upcast_lmhead_output default False (hparams/model_args.py).
    "llama-factory": Recipe(_no_change, _peft_adapt, _model_loss),
    # ms-swift swift/pipelines/train/tuner.py: no prepare_model_for_kbit_training; lora_dtype None keeps PEFT's fp32.
    "ms-swift": Recipe(_no_change, _peft_adapt, _swift_loss),
}


def recipe(req: PlanRequest) -> Recipe:
    """The hooks for ``req.training.framework`` (Unsloth is estimated analytically only)."""
    from app.trace.engine import UnsupportedStep

    framework = req.training.framework
    if framework in ("litgpt", "lit-gpt"):
        raise UnsupportedStep(f"{framework} trains its own GPT model (not transformers'); it is estimated "
                              "analytically, and bench/litgpt_trace.py traces litgpt's code from a source tree "
                              "(docs/frameworks.md)")
    if framework not in RECIPES:
        raise UnsupportedStep(f"{framework} runs Triton kernels and offloaded checkpointing that need a CUDA GPU; "
                              "it is estimated analytically (docs/frameworks.md)")
    if framework == "trl" and importlib.util.find_spec("trl") is None:
        raise UnsupportedStep("training.framework 'trl' runs TRL's own SFTTrainer: install the 'trl' extra "
                              "(pip install '.[trl]')")
    return RECIPES[framework]
