"""What each training framework does to the model and the step, for the analytic estimate (pure Python).

``training.framework`` picks the rules (sources read at the pinned releases; docs/frameworks.md):

- ``hf-trainer`` (default): transformers ``Trainer`` + PEFT; ``prepare_model_for_kbit_training`` upcasts every
  non-quantized parameter of a k-bit base to fp32 (``quantization.prepare_kbit``); the model's own loss over
  the full logits and accelerate's fp32 copy of them.
- ``trl`` (TRL 1.16.0, ``trl/trainer/sft_trainer.py``): never calls ``prepare_model_for_kbit_training`` (non-
  quantized parameters stay in the load dtype); under a k-bit base casts trainable parameters to bf16 except
  DoRA's magnitude (lines 903-911); the loss is ``add_fused_lm_head``'s chunked log-probabilities
  (``trl/trainer/utils.py``, ``trl/kernels/chunked_logprob.py``): no (b, s, V) logits, a [4096, 32768] tile.
- ``axolotl`` (0.18.0, ``src/axolotl/loaders/model.py``): ``prepare_model_for_kbit_training``, then norms and
  embedding modules (embed_tokens, lm_head) back to the load dtype: only other non-quantized parameters (MoE
  experts, routers) stay fp32. Loss: HF Trainer's.
- ``llama-factory`` (0.9.5, ``src/llamafactory/model/adapter.py``, ``model_utils/checkpointing.py``): no
  ``prepare_model_for_kbit_training``; trainable parameters fp32; ``upcast_layernorm`` off. Loss: HF Trainer's.
- ``ms-swift`` (4.5.2, ``swift/trainers/seq2seq_trainer.py``, ``swift/trainers/mixin.py``): no k-bit upcast;
  the model's loss plus ``logits.argmax(-1)`` for the token-accuracy metric.
- ``torchtune`` (v0.4.0, its own Llama modules, not transformers/PEFT): the model and LoRA weights in the recipe
  dtype without autocast, torchao NF4 for QLoRA, chunked cross-entropy, ``optimizer_in_bwd``: :mod:`app.core.torchtune`.
- ``unsloth``: not runnable here (Triton kernels, CUDA-only); modelled analytically: its fused chunked
  cross-entropy (no full logits), "unsloth" gradient checkpointing that offloads each layer's input to host
  RAM, its 4-bit loading without fp32 upcasts. See :func:`unsloth_terms`.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core import torchtune
from app.core.request import PlanRequest

TRL_TOKEN_CHUNK = 4096
"""trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE: tokens per projection tile."""
TRL_VOCAB_CHUNK = 32768
"""trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE: vocabulary columns per tile (the tile buffer is this wide)."""
UNSLOTH_CE_TARGET_BYTES = 4 * 2**30
"""unsloth_zoo ``fused_losses/cross_entropy_loss.py _get_chunk_multiplier``: each chunk's fp32 logits are kept under
``target_gb = min(free VRAM / 2, 4.0)`` GiB; the cap (4 GiB) applies whenever 8 GiB are free at the loss."""


@dataclass(frozen=True)
class Framework:
    """One framework's rules and where they come from."""

    name: str
    release: str
    kbit_upcast: str  # "request" (prepare_kbit), "none", or "non-norm" (axolotl: all but norms/embeddings)
    qlora_adapter_dtype: str | None  # dtype trainable params are cast to under a k-bit base (None: PEFT's fp32)
    loss: str  # "logits" (HF model loss + fp32 copy), "logits+argmax" (ms-swift), "trl-chunked", "unsloth-chunked",
    # "torchtune" (app/core/torchtune.py loss_path)
    # "litgpt-chunked" (litgpt's own GPT and loop: app/core/litgpt.py)
    traced: str  # how the trace engine runs it: "own code", "replayed", "analytic only"
    source: str


FRAMEWORKS: dict[str, Framework] = {
    "hf-trainer": Framework("hf-trainer", "transformers 5.24.0 / peft 0.21.2", "request", None, "logits",
                            "own code", "transformers trainer.py; peft utils/other.py prepare_model_for_kbit_training"),
    "trl": Framework("trl", "TRL 1.16.0", "none", "bf16", "trl-chunked", "own code",
                     "trl/trainer/sft_trainer.py SFTTrainer.__init__ / compute_loss; trl/trainer/utils.py "
                     "add_fused_lm_head; trl/kernels/chunked_logprob.py"),
    "axolotl": Framework("axolotl", "axolotl 0.18.0", "non-norm", None, "logits", "replayed",
                         "src/axolotl/loaders/model.py _configure_embedding_dtypes, _prepare_model_for_quantization"),
    "llama-factory": Framework("llama-factory", "LLaMA-Factory 0.9.5", "none", None, "logits", "replayed",
                               "src/llamafactory/model/adapter.py init_adapter; model_utils/checkpointing.py"),
    "ms-swift": Framework("ms-swift", "ms-swift 4.5.2", "none", None, "logits+argmax", "replayed",
                          "swift/trainers/seq2seq_trainer.py compute_loss; swift/trainers/mixin.py _compute_acc"),
    "unsloth": Framework("unsloth", "Unsloth 2026.8 (v0.1.801-beta)", "none", None, "unsloth-chunked",
                         "analytic only", "unsloth/models/_utils.py, unsloth_zoo/loss_utils.py, "
                         "unsloth_zoo/gradient_checkpointing.py"),
    "torchtune": Framework("torchtune", torchtune.RELEASE, "none", "bf16", "torchtune", "analytic only",
                           torchtune.SOURCE),
    "litgpt": Framework("litgpt", "litgpt 0.4.13.dev1 (commit 00af8b0d, 2024-09-27)", "none", None,
                        "litgpt-chunked", "analytic (bench/litgpt_trace.py runs its code)",
                        "litgpt/model.py GPT, litgpt/lora.py LoRAQKVLinear, litgpt/finetune/lora.py, "
                        "litgpt/utils.py chunked_cross_entropy, lightning fabric/plugins/precision/bitsandbytes.py"),
    "lit-gpt": Framework("lit-gpt", "lit-gpt commit 8641822 (2023-10-20)", "none", None, "litgpt-chunked",
                         "analytic (bench/litgpt_trace.py runs its code)",
                         "lit_gpt/model.py GPT, lit_gpt/lora.py LoRAQKVLinear, finetune/lora.py, "
                         "lit_gpt/utils.py chunked_cross_entropy, lightning fabric/plugins/precision/bitsandbytes.py"),
}


def framework(req: PlanRequest) -> Framework:
    return FRAMEWORKS[req.training.framework]


def kbit_upcast_groups(req: PlanRequest) -> str:
    """Which non-quantized parameters of a k-bit base end in fp32: "all", "none" or "non-norm"."""
    rule = framework(req).kbit_upcast
    if rule == "request":
        return "all" if req.quantization.prepare_kbit else "none"
    return rule


def stays_in_load_dtype(tensor_name: str) -> bool:
    """axolotl ``_convert_embedding_modules_dtype``: modules with "norm" in their name and the embedding modules
    (``get_linear_embedding_layers``: embed_tokens/lm_head, GPT-2 wte/wpe) go back to the load dtype."""
    module = tensor_name.rsplit(".", 1)[0]
    return "norm" in module or any(m in module for m in ("embed_tokens", "lm_head", "wte", "wpe"))


@dataclass(frozen=True)
class LossPath:
    """Bytes of a framework's loss path (replacing the HF recipe's logits terms of ``ActivationModel``)."""

    saved: int  # saved for backward from the loss until its backward (beyond the final norm's own tensors)
    forward: int  # live during the loss forward beyond ``saved``
    backward: int  # live at the start of backward beyond ``saved`` (the loss gradients)
    block: int  # elements of the largest block of logits built at once (a tile or chunk)


def trl_loss_path(req: PlanRequest, hidden: int, vocab: int, hidden_bytes: int, compute_bytes: int,
                  head_bytes: int, head_trainable: bool) -> LossPath:
    """TRL 1.16.0's fused LM head on a CUDA GPU (``trl/trainer/utils.py add_fused_lm_head._fused_forward`` and
    ``trl/kernels/chunked_logprob.py ChunkedLogProbFunction``), with N = b·(s−1) scored positions:

    - forward: ``hidden_states[mask]`` (N×h, saved) and its int64 index (2 columns); the tile buffer
      ``mm_buf`` min(N, 4096)×32768 in the compute dtype; per-chunk casts of the hidden rows (if their dtype
      is not the compute dtype) and of ≤32768 lm_head rows (if lm_head is not in the compute dtype); seven fp32
      N-vectors of running statistics; saved: int64 targets, fp32 log_z and entropy, the bool mask.
    - backward: fp32 ``grad_hidden`` (N×h) and, for a trainable lm_head, fp32 ``grad_weight`` (V×h), the tile
      buffer and the chunk casts; at return ``grad_hidden.to(hidden.dtype)`` (and ``grad_weight.to``) while
      they are alive.
    """
    tr = req.training
    n = tr.micro_batch_size * (tr.seq_len - 1)
    rows = min(n, TRL_TOKEN_CHUNK)
    tile = rows * TRL_VOCAB_CHUNK * compute_bytes
    hidden_cast = rows * hidden * compute_bytes if hidden_bytes != compute_bytes else 0
    head_cast = min(vocab, TRL_VOCAB_CHUNK) * hidden * compute_bytes if head_bytes != compute_bytes else 0
    saved = n * hidden * hidden_bytes + n * (8 + 4 + 4 + 1)
    forward = 16 * n + tile + hidden_cast + head_cast + 7 * 4 * n + 3 * 4 * n
    grad_weight = 4 * vocab * hidden + (vocab * hidden * head_bytes if head_bytes != 4 else 0) if head_trainable else 0
    back_hidden = n * hidden * (4 + (hidden_bytes if hidden_bytes != 4 else 0))
    backward = back_hidden + grad_weight + tile + hidden_cast + head_cast + 4 * n
    return LossPath(saved=saved, forward=forward, backward=backward, block=rows * TRL_VOCAB_CHUNK)


UNSLOTH_FAST_TYPES = ("llama", "mistral", "qwen2", "qwen3")
"""Decoder types whose layers unsloth/models/llama.py ``patch_peft_model`` maps to ``apply_lora_mlp_swiglu`` and the
fused QKV/O kernels (others: HF modelling rules apply)."""
UNSLOTH_GPU_BUFFERS = 2
"""unsloth_zoo ``gradient_checkpointing.py``: ``GPU_BUFFERS`` and ``GPU_BUFFERS_B`` (double buffering in backward),
each resized to one layer input, receive the offloaded layer inputs back from pinned host memory."""


def unsloth_fast_lora(req: PlanRequest) -> bool:
    """Unsloth patches a layer with its fused LoRA kernels (``FastLlamaModel.patch_peft_model``: LoRA_QKV, LoRA_W,
    LoRA_MLP) when the adapter is plain LoRA without dropout or bias on every linear of the layer."""
    return req.uses_adapter and not req.uses_dora and req.lora.lora_dropout == 0 and req.lora.bias == "none"


def unsloth_layer_saved(hidden: int, intermediate: int, q_dim: int, kv_dim: int, heads: int, tokens: int,
                        act_bytes: int) -> int:
    """Bytes one decoder layer saves for backward under Unsloth's kernels (unsloth ``kernels/fast_lora.py``,
    ``kernels/rms_layernorm.py``, ``kernels/rope_embedding.py`` at 2026.8.19), T tokens, activations in the
    model dtype: ``Fast_RMS_Layernorm`` saves its input and the fp32 rstd (the first norm's input is the layer
    input, already held); ``LoRA_QKV`` saves its input; RoPE saves only the shared cos/sin; flash attention
    keeps q, k, v, its output (which ``LoRA_W`` saves as o_proj's input) and the fp32 LSE; ``LoRA_MLP`` saves its
    input and the gate and up outputs (the SwiGLU product is recomputed in backward)."""
    t, a = tokens, act_bytes
    norms = a * t * hidden + 2 * 4 * t
    attention = a * t * hidden + a * t * (2 * q_dim + 2 * kv_dim) + 4 * t * heads
    mlp = a * t * hidden + 2 * a * t * intermediate
    return norms + attention + mlp


def unsloth_chunks(tokens: int, vocab: int, target_bytes: int) -> int:
    """unsloth_zoo ``get_chunk_size``: chunks needed to keep each chunk's fp32 logits under ``target_bytes``, rounded
    up to a multiple of 4 (1 when the whole fits); at most one chunk per row."""
    full = tokens * vocab * 4
    if full <= target_bytes:
        return 1
    return min(-(-full // (4 * max(target_bytes, 1))) * 4, tokens)


def unsloth_loss_path(req: PlanRequest, hidden: int, vocab: int, hidden_bytes: int, compute_bytes: int,
                      free_bytes: int) -> LossPath:
    """Unsloth's fused cross-entropy (unsloth_zoo 2026.8.13 ``fused_losses/cross_entropy_loss.py``
    ``UnslothFusedLoss.forward``): loss and gradient are computed in the forward, chunk by chunk
    (``torch.func.grad_and_value`` per ``torch.chunk`` of the rows), into ``grad_inputs`` (``empty_like`` the hidden
    states, kept for backward). The chunk target is ``min(free VRAM / 2, 4 GiB)`` of fp32 logits
    (``_get_chunk_multiplier``), ``free_bytes`` being the card's memory not yet in use at the loss. Per chunk of
    ⌈T/n⌉ rows, ``accumulate_chunk`` is ``torch.compile``d (``torch_compile=True``): the fp32 upcast and softmax of
    ``compute_fused_ce_loss`` fuse into the kernels, leaving the chunk's logits and their gradient in the compute
    dtype. Backward scales ``grad_inputs`` by the incoming gradient (one hidden-sized tensor). Analytic only."""
    tokens = req.training.micro_batch_size * req.training.seq_len
    target = min(max(free_bytes, 0) // 2, UNSLOTH_CE_TARGET_BYTES)
    rows = -(-tokens // unsloth_chunks(tokens, vocab, target))
    grad_inputs = tokens * hidden * hidden_bytes
    return LossPath(saved=grad_inputs, forward=rows * vocab * 2 * compute_bytes, backward=grad_inputs,
                    block=rows * vocab)


def assumption(req: PlanRequest) -> str:
    """The line the result's ``assumptions`` carries for the framework."""
    fw = framework(req)
    text = f"Framework: {fw.name} ({fw.release}; {fw.source}). "
    if fw.name == "hf-trainer":
        return text + "HF Trainer recipe: the model's own loss over the full logits plus accelerate's fp32 copy."
    if fw.name == "torchtune":
        return text + torchtune.assumption(req)
    if fw.loss == "litgpt-chunked":
        return text + ("litgpt trains its own GPT (fused qkv linear, LoRAQKVLinear), not a transformers model, under "
                       "Fabric: with precision bf16 (bf16-true) every parameter, LoRA A/B, gradient and AdamW state is "
                       "bf16; QLoRA quantizes every nn.Linear including lm_head and uses bnb PagedAdamW; Fabric hands "
                       "the loop fp32 logits (128-position chunks), kept with the previous step's; one-GPU fine-tuning "
                       "has no activation checkpointing (training.gradient_checkpointing does not apply). Estimated "
                       "analytically from its source (app/core/litgpt.py); bench/litgpt_trace.py traces its real "
                       "code for comparison.")
    if fw.name == "unsloth":
        return text + ("Unsloth needs a CUDA GPU (Triton kernels), so it is estimated analytically, not traced: "
                       "no fp32 upcast of the base, fused chunked cross-entropy (no full logits), and 'unsloth' "
                       "gradient checkpointing keeps each layer's input in host RAM instead of on the GPU.")
    rules = {
        "trl": "SFTTrainer: no prepare_model_for_kbit_training; under a k-bit base LoRA weights are cast to bf16; "
               "loss by the chunked fused LM head (no (b, s, vocab) logits). Traced with TRL's own code.",
        "axolotl": "k-bit bases: prepare_model_for_kbit_training, then norms and embeddings back to the load "
                   "dtype; HF Trainer loss. axolotl pins other library releases, so its preparation is replayed.",
        "llama-factory": "no prepare_model_for_kbit_training, trainable parameters fp32, layer norms not upcast; "
                         "HF Trainer loss. LLaMA-Factory pins other library releases, so it is replayed.",
        "ms-swift": "no k-bit upcast; the model's loss plus an argmax of the logits for token accuracy. ms-swift "
                    "pins other library releases, so it is replayed.",
    }
    return text + rules[fw.name]
