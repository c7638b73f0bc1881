"""Trace torchtune's own model and step under the live-bytes counter (``training.framework='torchtune'``).

Builds torchtune's Llama decoder (``torchtune.models.llama2`` / ``llama3_2`` component builders: the modules its
recipes instantiate) in the recipe dtype under ``training.set_default_dtype``, with LoRA/QLoRA (torchao
``NF4Tensor``) as the recipe sets them (``set_trainable_params(model, get_adapter_params(model))``), activation
checkpointing as ``training.set_activation_checkpointing`` wraps it, the recipe's loss (``CEWithChunkedOutputLoss``
or ``CrossEntropyLoss``, labels shifted with ``torch.hstack`` as ``_loss_step`` does, ``del logits`` before
backward), ``torch.optim.AdamW`` (foreach, as on CUDA) and ``optimizer_in_bwd`` through
``training.register_optim_in_bwd_hooks``. Two steps run on real CPU tensors; the peak of the second (optimizer states
resident) is the figure, as in :func:`app.trace.engine.run_trace`.

torchtune 0.4.0 and torchao 0.10.0 are the ``torchtune`` extra, installed in ``.venv-torchtune`` (``make
torchtune-venv``: it sees ``.venv``'s pinned packages through a ``.pth``; PEFT 0.21.2 refuses the torchao < 0.16 that
every torchtune release needs, so they cannot share ``.venv``); imported lazily, so the rest of the project runs
without them. CPU stand-ins: PyTorch's CPU
flash attention keeps what the CUDA kernel keeps (q, k, v, output, fp32 log-sum-exp); ``torch.compile``, packing
(flex attention) and activation offloading (CUDA streams) are not traced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.torchtune import MLP_NAMES, TT_LORA_NAMES


@dataclass(frozen=True)
class TorchtuneCase:
    """One traced run: a Llama shape (HF config.json keys), the method and the recipe settings."""

    config: dict[str, Any]
    method: str = "lora"  # lora, qlora, full
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")  # HF names; the MLP is adapted only all three at once
    r: int = 8
    micro_batch_size: int = 2
    seq_len: int = 256
    gradient_checkpointing: bool = True
    num_output_chunks: int = 8
    optimizer_in_bwd: bool = False
    gradient_accumulation_steps: int = 1

    def request(self) -> dict[str, Any]:
        """The PlanRequest body of this case (framework 'torchtune')."""
        body: dict[str, Any] = {
            "model": {"config": self.config}, "method": self.method,
            "training": {"framework": "torchtune", "micro_batch_size": self.micro_batch_size, "seq_len": self.seq_len,
                         "gradient_checkpointing": self.gradient_checkpointing,
                         "num_output_chunks": self.num_output_chunks, "optimizer_in_bwd": self.optimizer_in_bwd,
                         "gradient_accumulation_steps": self.gradient_accumulation_steps},
        }
        if self.method != "full":
            body["lora"] = {"r": self.r, "lora_alpha": 2 * self.r, "target_modules": list(self.target_modules)}
        return body


def _build(case: TorchtuneCase) -> Any:
    """torchtune's decoder for the case, in bf16 (``training.set_default_dtype``): for a ``qwen2`` config the qwen2
    component builders (which the qwen2_5 model builders call: q/k/v biases, its own RoPE, ``tie_word_embeddings``),
    for a ``mistral`` config the mistral ones, else ``llama3_2`` (tied output) for a tied config and ``llama2``
    otherwise; the ``lora_*`` builder for LoRA/QLoRA (``quantize_base`` for QLoRA)."""
    import torch
    from torchtune import training
    from torchtune.models.gemma._component_builders import gemma, lora_gemma
    from torchtune.models.llama2._component_builders import llama2, lora_llama2
    from torchtune.models.llama3_2._component_builders import llama3_2, lora_llama3_2
    from torchtune.models.mistral._component_builders import lora_mistral, mistral
    from torchtune.models.qwen2._component_builders import lora_qwen2, qwen2

    c = case.config
    shape: dict[str, Any] = dict(
        vocab_size=c["vocab_size"], num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
        num_kv_heads=c.get("num_key_value_heads", c["num_attention_heads"]), embed_dim=c["hidden_size"],
        max_seq_len=c["max_position_embeddings"], intermediate_dim=c["intermediate_size"])
    tied = c.get("tie_word_embeddings", False)
    if c.get("model_type") == "qwen2":
        shape["tie_word_embeddings"] = tied
        base, lora = qwen2, lora_qwen2
    elif c.get("model_type") == "mistral":
        base, lora = mistral, lora_mistral
    elif c.get("model_type") == "gemma":
        shape["head_dim"] = c["head_dim"]
        base, lora = gemma, lora_gemma
    elif tied:  # Llama-3.2-shaped (its builders refuse an untied output)
        base, lora = llama3_2, lora_llama3_2
    else:
        base, lora = llama2, lora_llama2
    with training.set_default_dtype(torch.bfloat16):
        if case.method == "full":
            return base(**shape)
        mlp = [m for m in case.target_modules if m in MLP_NAMES]
        if mlp and len(mlp) != len(MLP_NAMES):
            raise ValueError("torchtune adapts the MLP as a whole (apply_lora_to_mlp): name all of "
                             f"{', '.join(MLP_NAMES)} or none")
        attn = [TT_LORA_NAMES[m] for m in case.target_modules if m in TT_LORA_NAMES]
        output = {} if base is gemma else {"apply_lora_to_output": False}  # lora_gemma has no such argument
        return lora(lora_attn_modules=attn, apply_lora_to_mlp=bool(mlp), lora_rank=case.r, lora_alpha=2 * case.r,
                    quantize_base=case.method == "qlora", **output, **shape)


def _counter() -> Any:
    """The project's :class:`~app.trace.counter.LiveBytesCounter`, letting torchao's ``NF4Tensor`` run its own
    ``__torch_dispatch__`` under the mode (returning ``NotImplemented`` for subclass arguments) so that the plain
    tensors of its dequantization are counted; an ``NF4Tensor`` is counted by its inner tensors."""
    import torch
    from torchao.dtypes.nf4tensor import NF4Tensor

    from app.trace.counter import LiveBytesCounter

    plain = (torch.Tensor, torch.nn.Parameter)

    class NF4AwareCounter(LiveBytesCounter):
        def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
            if any(t not in plain for t in types):
                return NotImplemented
            return super().__torch_dispatch__(func, types, args, kwargs)

        def track(self, tensors: Any, op: str = "existing") -> None:
            flat: list[Any] = []
            for t in tensors:
                if isinstance(t, NF4Tensor):
                    flat += [t.quantized_data, t.quantized_scalers, t.quantization_factor, t.scaler_mean, t.nf4]
                elif isinstance(t, torch.Tensor) and type(t) in plain:
                    flat.append(t)
            super().track(flat, op)

    return NF4AwareCounter()


@dataclass(frozen=True)
class TorchtuneTrace:
    peak_bytes: int
    peak_phase: str
    phases: dict[str, int]


def trace(case: TorchtuneCase, *, steps: int = 2, seed: int = 0) -> TorchtuneTrace:
    """Run ``steps`` training steps of torchtune's model on real CPU tensors under the counter; the peak of the last
    step (bytes of live tensor storages) and the phase it is in."""
    import torch
    from torchtune import modules, training
    from torchtune.modules.loss import CEWithChunkedOutputLoss
    from torchtune.modules.peft import get_adapter_params, set_trainable_params

    torch.manual_seed(seed)
    model = _build(case)
    if case.method != "full":
        set_trainable_params(model, get_adapter_params(model))
    if case.gradient_checkpointing:
        training.set_activation_checkpointing(model, auto_wrap_policy={modules.TransformerSelfAttentionLayer})
    if case.num_output_chunks:
        loss_fn: Any = CEWithChunkedOutputLoss(num_output_chunks=case.num_output_chunks)
        model.set_num_output_chunks(case.num_output_chunks)
    else:
        loss_fn = torch.nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = None
    if case.optimizer_in_bwd:
        # foreach=True: what torch.optim picks for CUDA tensors
        optim_dict = {p: torch.optim.AdamW([p], lr=1e-5, foreach=True) for p in params}
        training.register_optim_in_bwd_hooks(model=model, optim_dict=optim_dict)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-5, foreach=True)
    vocab = case.config["vocab_size"]
    b, s = case.micro_batch_size, case.seq_len
    tokens = torch.randint(0, vocab, (b, s))
    labels = torch.randint(0, vocab, (b, s))
    ignore = torch.full((b, 1), loss_fn.ignore_index)
    counter = _counter()
    with counter:
        counter.track([*model.parameters(), *model.buffers()])
        for step in range(steps):
            if step == steps - 1:
                counter.reset_peak()
            # the recipes step the optimizer every gradient_accumulation_steps batches; every batch after the first
            # runs beside the accumulated gradients, all alike, so two stand for any number
            for _ in range(min(case.gradient_accumulation_steps, 2)):
                counter.set_phase("forward")
                logits = model(tokens)
                # recipes/lora_finetune_single_device.py _loss_step: shift the labels, not the logits
                shifted = torch.hstack((labels[..., 1:], ignore))
                if not isinstance(logits, list):
                    shifted = shifted.reshape(-1)
                    logits = logits.reshape(-1, logits.size(-1))
                counter.set_phase("loss")
                loss = loss_fn(logits, shifted)
                del logits  # "free logits otherwise it peaks backward memory"
                counter.set_phase("backward")
                loss.backward()
                del loss
            counter.set_phase("optimizer")
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    return TorchtuneTrace(counter.peak, counter.snapshot.phase,
                          {name: st.peak_bytes for name, st in counter.phases.items()})
