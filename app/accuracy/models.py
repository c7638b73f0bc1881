"""Which model a published row ran, as the planner knows it: a catalog id (also by the short names torchtune, litgpt
and papers give: :func:`short_name`), a shape-for-shape equal one (:data:`EQUIVALENTS`), a model given by its
config.json (:data:`CONFIGS`; outside the hand-written rules through the generic path), Qwen (v1) as a qwen2-shaped
config (:data:`QWEN1`), or a Skip with the reason. Pure Python."""

from __future__ import annotations

import re
from typing import Any

from app.accuracy.skip import Skip
from app.core import model_configs

# CSV model name -> (catalog id, why it is the same architecture).
EQUIVALENTS: dict[str, tuple[str, str]] = {
    "HuggingFaceTB/SmolLM-135M": (
        "HuggingFaceTB/SmolLM2-135M",
        "SmolLM-135M = SmolLM2-135M shapes (llama, 30L, h576, 9/3 heads, ffn 1536, vocab 49152, tied; "
        "134,515,008 params)",
    ),
    # litgpt config names (litgpt/config.py) → the Hub checkpoints they convert (config_hub checkpoint_dir)
    "Mistral-7B": ("mistralai/Mistral-7B-v0.1", "litgpt Mistral-7B = mistralai/Mistral-7B-v0.1"),
    "phi-1.5": ("microsoft/phi-1_5", "litgpt phi-1_5 = microsoft/phi-1_5"),
    "Mistral-7B-v0.2": (
        "mistralai/Mistral-7B-Instruct-v0.2",
        "litgpt Mistral-7B-v0.2 (base) = Mistral-7B-Instruct-v0.2 shapes (32L, h4096, ffn 14336, 32/8 heads, "
        "vocab 32000)",
    ),
}

# Models outside the catalog given by their Hub config.json values (litgpt config_hub checkpoint_dir).
CONFIGS: dict[str, tuple[dict[str, Any], str]] = {
    "TinyLlama-1.1B": (
        dict(model_type="llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
             num_attention_heads=32, num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False),
        "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T config.json (a llama)",
    ),
    # litgpt's LayerNorm + GptNeoxMLP parallel blocks (app/core/litgpt.py); the weights' inventory from the generic
    # path (transformers' GPTNeoXForCausalLM / FalconForCausalLM on the meta device)
    "StableLM-base-alpha-3B": (
        dict(architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox", hidden_size=4096, intermediate_size=16384,
             num_hidden_layers=16, num_attention_heads=32, vocab_size=50688, rotary_pct=0.25,
             use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-5, max_position_embeddings=4096,
             tie_word_embeddings=False),
        "stabilityai/stablelm-base-alpha-3b config.json (gpt_neox: 16 layers, h 4096, 32 heads, ffn 16384, vocab "
        "50688, rotary_pct 0.25, parallel residual, untied embed_out)",
    ),
    "falcon-7b": (
        dict(architectures=["FalconForCausalLM"], model_type="falcon", hidden_size=4544, num_hidden_layers=32,
             num_attention_heads=71, vocab_size=65024, multi_query=True, new_decoder_architecture=False,
             parallel_attn=True, bias=False, alibi=False, layer_norm_epsilon=1e-5),
        "tiiuae/falcon-7b config.json (falcon: 32 layers, h 4544, 71 query heads and one key/value head, ffn 18176, "
        "vocab 65024, parallel attention; litgpt unties lm_head from the embedding)",
    ),
    "Falcon-40B": (
        dict(architectures=["FalconForCausalLM"], model_type="falcon", hidden_size=8192, num_hidden_layers=60,
             num_attention_heads=128, num_kv_heads=8, vocab_size=65024, new_decoder_architecture=True,
             parallel_attn=True, bias=False, alibi=False, layer_norm_epsilon=1e-5),
        "tiiuae/falcon-40b config.json (falcon new decoder: 60 layers, h 8192, 128 query / 8 key-value heads, "
        "ln_attn + ln_mlp, vocab 65024)",
    ),
    # outside the hand-written rules: estimated through the generic path (transformers' own BloomForCausalLM,
    # PEFT's default targets, activations fitted from traces; app/models/generic.py, app/models/peak_fit.py)
    "bigscience/bloomz-7b1": (
        dict(architectures=["BloomForCausalLM"], model_type="bloom", hidden_size=4096, n_layer=30, n_head=32,
             vocab_size=250880, layer_norm_epsilon=1e-5, hidden_dropout=0.0, attention_dropout=0.0,
             apply_residual_connection_post_layernorm=False, pretraining_tp=1, slow_but_exact=False,
             bos_token_id=1, eos_token_id=2, pad_token_id=3, unk_token_id=0),
        "bigscience/bloomz-7b1 config.json (bloom: 30 layers, h 4096, 32 heads, vocab 250880, tied lm_head; "
        "7,069,016,064 params), outside the hand-written rules: the generic path (transformers' BloomForCausalLM, "
        "activations fitted from traces of small variants)",
    ),
    "bigcode/starcoder": (
        dict(architectures=["GPTBigCodeForCausalLM"], model_type="gpt_bigcode", n_embd=6144, n_layer=40, n_head=48,
             n_inner=24576, n_positions=8192, vocab_size=49152, multi_query=True,
             activation_function="gelu_pytorch_tanh", layer_norm_epsilon=1e-5, attn_pdrop=0.1, embd_pdrop=0.1,
             resid_pdrop=0.1, scale_attn_weights=True, attention_softmax_in_fp32=True,
             scale_attention_softmax_in_fp32=True, bos_token_id=0, eos_token_id=0),
        "bigcode/starcoder config.json (gpt_bigcode: 40 layers, h 6144, 48 query heads and one key/value head, ffn "
        "24576, vocab 49152, 8192 learned positions, dropout 0.1, tied lm_head; 15,517,456,384 params), outside the "
        "hand-written rules: the generic path (transformers' GPTBigCodeForCausalLM)",
    ),
}

NOT_DECODER_ONLY = {
    "bigscience/T0_3B": "bigscience/T0_3B: T5 encoder-decoder (seq2seq)",
    "bigscience/mt0-xxl": "bigscience/mt0-xxl: mT5 encoder-decoder (seq2seq)",
    "bert-large-uncased": "bert-large-uncased: BERT encoder, sequence classification",
}
"""Published models whose training step is not a causal LM's (the rows stay listed, with this reason)."""

# Qwen (v1) config.json values (hub Qwen/Qwen-*/config.json) as a qwen2 config: MHA, ffn = intermediate/2.
QWEN1: dict[str, dict[str, Any]] = {
    "Qwen-1.8B": dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                      vocab_size=151936),
    "Qwen-7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    vocab_size=151936),
    "Qwen-14B": dict(hidden_size=5120, intermediate_size=13696, num_hidden_layers=40, num_attention_heads=40,
                     vocab_size=152064),
    "Qwen-72B": dict(hidden_size=8192, intermediate_size=24576, num_hidden_layers=80, num_attention_heads=64,
                     vocab_size=152064),
}
QWEN1_NOTE = ("Qwen (v1) as a qwen2 config (MHA, same tensors); PEFT's fused c_attn LoRA has 2·r·h fewer params per "
              "layer than our separate q/k/v; adapters were bf16 (PEFT 0.5 era) where we assume fp32")


def resolve_model(name: str) -> tuple[str, str]:
    """(catalog id, equivalence note) or raise Skip."""
    base = re.sub(r"\s*\(.*\)\s*$", "", name).strip()
    ids = model_configs()
    if base in ids:
        return base, ""
    by_name = {short_name(i): i for i in ids}
    if short_name(base) in by_name:
        return by_name[short_name(base)], ""
    if base in EQUIVALENTS:
        return EQUIVALENTS[base]
    if base in NOT_DECODER_ONLY:
        raise Skip("not a decoder-only causal LM: the planner models causal-LM fine-tuning", NOT_DECODER_ONLY[base])
    raise Skip("model not in the catalog and no equivalent architecture", base)


def short_name(model_id: str) -> str:
    """'meta-llama/Llama-2-7b-hf' and 'Llama-2-7B' → 'llama-2-7b'; 'meta-llama/Meta-Llama-3-8B' → 'llama-3-8b': the
    names torchtune, litgpt and papers give the same Hub checkpoints (org, 'Meta-' and '-hf' dropped, case folded)."""
    return model_id.split("/")[-1].lower().removeprefix("meta-").removesuffix("-hf")


def row_model(name: str, notes: list[str]) -> tuple[str | dict[str, Any], str, bool]:
    """(the request's ``model``, the label the tables print, whether it was given by a config.json) for the CSV's
    model column; the equivalence or config note is appended to ``notes``."""
    base = re.sub(r"\s*\(.*\)\s*$", "", name).strip()
    if base in CONFIGS:
        notes.append(CONFIGS[base][1])
        return {"config": CONFIGS[base][0]}, f"{base} (cfg)", True
    if base in QWEN1:
        notes.append(QWEN1_NOTE)
        cfg = {"model_type": "qwen2", "num_key_value_heads": QWEN1[base]["num_attention_heads"],
               "tie_word_embeddings": False, **QWEN1[base]}
        return {"config": cfg}, f"{base} (cfg)", True
    model, equiv = resolve_model(name)
    if equiv:
        notes.append(equiv)
    return model, model, False
