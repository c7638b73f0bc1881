"""training.framework litgpt / lit-gpt: litgpt's own GPT model and loop, analytic (app/core/litgpt.py).

Expected figures are derived by hand from litgpt's source (cited in app/core/litgpt.py) in the comments; the same
formulas were checked against litgpt's real code traced on fake tensors (bench/litgpt_trace.py: 12 cases per
commit, 23 of 24 within 2%), which needs a litgpt source tree and is not run here.
"""

from __future__ import annotations

import pytest

from app.accuracy.rows import Skip, map_row, read_rows
from app.core import PlanRequest, estimate
from app.core.architectures import parse_config
from app.core.errors import PlanError
from app.core.litgpt import Shape, Targets, head_terms, layer_saved, previous_step_inputs
from app.core.quantization import nf4_bytes

# A tiny MHA llama: h 64, MLP 160, 4 heads of 16 (q = kv = 64), vocab 256.
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 256, "tie_word_embeddings": False}
# b 2, s 8 → T 16 tokens; bf16 (a = 2); LoRA r 2 on q and v with dropout.
X = Shape(b=2, s=8, a=2, r=2, dropout=True, quantized=False, full=False)
QV = Targets(query=True, key=False, value=True, projection=False, mlp=False, head=False)


def test_layer_saved_by_hand() -> None:
    """litgpt 00af8b0d, a middle layer (bytes, T = 16, h = q = kv = 64, I = 160, a = 2):
    two RMSNorms on x.float(): 2·(4·T·h + 4·T) = 8320; LoRAQKVLinear: dropout output a·T·h = 2048 + bool mask
    T·h = 1024 + after_A a·T·r·2 = 128 + conv output kept by zero_pad (q and v only) a·T·(q+kv) = 4096; MHA
    attention: the fused qkv output kept by the v view a·T·(q+2kv) = 6144, RoPE'd q and k 2·a·T·q = 4096, flash
    output a·T·q = 2048, fp32 logsumexp 4·b·heads·s = 256; LLaMAMLP 3·a·T·I = 15360. Total 43520. The first layer's
    input needs no gradient: no norm_1 copy (4160) and no mask (1024): 38336. lit-gpt 8641822's RMSNorm keeps its
    bf16 input and rsqrt (a·T·h + a·T = 2080 per norm): 43520 − 2·4160 + 2·2080 = 39360, first layer 36256."""
    arch = parse_config(TINY)
    assert layer_saved(arch, X, QV, old=False, layer=1) == 43520
    assert layer_saved(arch, X, QV, old=False, layer=0) == 38336
    assert layer_saved(arch, X, QV, old=True, layer=1) == 39360
    assert layer_saved(arch, X, QV, old=True, layer=0) == 36256


def test_gqa_and_no_dropout_by_hand() -> None:
    """GQA (2 kv heads: kv = 32): k and v are expanded and copied by reshape, q/k/v saved at full width
    3·a·T·q = 6144 and the fused output is freed; without dropout lora_A keeps norm_1's output itself (a·T·h = 2048)
    and there is no mask. 8320 + (128 + 2048 + a·T·(q+kv) = 3072) + 6144 + 2048 + 256 + 15360 = 37376."""
    arch = parse_config({**TINY, "num_key_value_heads": 2})
    x = Shape(b=2, s=8, a=2, r=2, dropout=False, quantized=False, full=False)
    assert layer_saved(arch, x, QV, old=False, layer=1) == 37376


def test_chunked_loss_by_hand() -> None:
    """ln_f on x.float(): 4·T·h + 4·T = 4160 saved (a frozen bf16 lm_head keeps no input). The model makes bf16
    logits (a·T·V = 8192); Fabric's convert_output hands the loop fp32 ones (L = 4·T·V = 16384). Forward end: the
    previous step's L, this step's L and the bf16 originals: 40960. Backward: the fp32 logits, the saved fp32
    log_softmax outputs and one 8-position chunk's two fp32 gradients (2·4·b·8·V = 32768): 65536. optimizer.step:
    the loop's fp32 logits (16384). A 4-bit lm_head (QLoRA) keeps its input (a·T·h = 2048) and dequantizes V×h
    (a·V·h = 32768) at the last chunk beside the previous L and the bf16 chunks: 16384 + 8192 + 32768 = 57344."""
    arch = parse_config(TINY)
    lp = head_terms(arch, X, QV, old=False, head_quantized=False)
    assert (lp.saved, lp.loss_forward, lp.loss_backward, lp.at_step) == (4160, 40960, 65536, 16384)
    q = head_terms(arch, Shape(2, 8, 2, 2, True, True, False), QV, old=False, head_quantized=True)
    assert (q.saved, q.loss_forward, q.loss_backward) == (4160 + 2048, 57344, 65536)


def test_previous_steps_4bit_inputs_by_hand() -> None:
    """bitsandbytes ≤ 0.42 keeps each MatMul4Bit input as a ctx attribute until litgpt's ``loss`` variable drops the
    previous graph: per layer norm_1's output, the attention output, norm_2's output, the MLP product
    a·T·(h + q + h + I) = 2·16·352 = 11264, two layers 22528 (the first layer's norm_1 output is not kept, the final
    norm's output is: same size)."""
    assert previous_step_inputs(parse_config(TINY), Shape(2, 8, 2, 2, True, True, False)) == 22528


def _req(**training: object) -> PlanRequest:
    return PlanRequest.model_validate({
        "model": {"config": {**TINY, "tie_word_embeddings": True}}, "method": "qlora",
        "lora": {"r": 2, "target_modules": ["q_proj", "v_proj"]},
        "training": {"framework": "litgpt", "micro_batch_size": 2, "seq_len": 8, **training}})


def test_static_memory_follows_fabric() -> None:
    """QLoRA under litgpt: every nn.Linear including lm_head is 4-bit (Fabric _convert_layers); the lm_head is its
    own tensor (litgpt never ties it: convert_hf_checkpoint copies wte into lm_head); LoRA A/B are bf16 (created
    with the model under bf16-true): 2 layers × (A 2×64 + B 64×2) × 2 (q, v) = 1024 params = 2048 bytes."""
    res = estimate(_req())
    by_key = {b.key: b for b in res.breakdown}
    assert by_key["weights/lm_head"].bytes == nf4_bytes(256 * 64, double_quant=False).data
    assert by_key["weights/embedding"].bytes == 256 * 64 * 2
    assert res.memory.adapter_weights == 2 * 1024
    hf = estimate(PlanRequest.model_validate({**_req().model_dump(), "training": {"framework": "hf-trainer"}}))
    assert "weights/lm_head" not in {b.key for b in hf.breakdown}  # tied and not quantized in the HF recipe


def test_paged_adamw_under_qlora() -> None:
    """finetune/lora.py builds bnb PagedAdamW under BitsandbytesPrecision whatever training.optim says: 32-bit
    states, paged (outside the allocator) for tensors of ≥ 1e5 elements. LoRA r 64 on a 4096-wide model: each
    A (64×4096 = 262144 elements) and B is paged: 2 states × 4 bytes × 262144 × 2 tensors × 2 targets × layers."""
    cfg = {**TINY, "hidden_size": 4096, "intermediate_size": 4096, "num_attention_heads": 32,
           "num_key_value_heads": 32}
    req = PlanRequest.model_validate({"model": {"config": cfg}, "method": "qlora",
                                      "lora": {"r": 64, "target_modules": ["q_proj", "v_proj"]},
                                      "training": {"framework": "litgpt", "seq_len": 8}})
    res = estimate(req)
    paged = next(b.bytes for b in res.breakdown if b.key == "optimizer/paged")
    assert paged == 2 * 4 * 262144 * 2 * 2 * 2
    assert res.memory.optimizer_states == 0


@pytest.mark.parametrize(("training", "loc"), [
    ({"use_liger_kernel": True}, ("training", "use_liger_kernel")),
    ({"packing": True}, ("training", "packing")),
])
def test_switches_it_does_not_have_are_422(training: dict[str, object], loc: tuple[str, ...]) -> None:
    with pytest.raises(PlanError) as err:
        estimate(_req(**training))
    assert err.value.loc == loc


def test_published_rows_map() -> None:
    """Rows 121/122 (config hub Llama-2-7B, r 32 on q,v, micro batch 2, 512 tokens, A10G): bf16-true and torch
    AdamW / bnb PagedAdamW with nf4 *without* double quantization; lit-gpt FSDP rows and inference rows are skipped
    with their reasons."""
    rows = {int(r["row_id"]): r for r in read_rows()}
    lora, qlora = map_row(rows[121]), map_row(rows[122])
    assert lora.req.training.framework == "litgpt" and lora.req.training.precision == "bf16"
    assert lora.req.lora.lora_dropout > 0 and lora.req.lora.target_modules == ["q_proj", "v_proj"]
    assert qlora.req.training.optim == "paged_adamw_32bit"
    assert qlora.req.quantization.bnb_4bit_use_double_quant is False
    assert map_row(rows[71]).req.quantization.bnb_4bit_use_double_quant is True
    assert map_row(rows[69]).req.training.framework == "lit-gpt"
    for rid, reason in ((87, "lit-gpt FSDP"), (98, "not a training step")):
        with pytest.raises(Skip) as sk:
            map_row(rows[rid])
        assert sk.value.reason.startswith(reason)


def test_litgpt_config_importer(tmp_path: object) -> None:
    """A config_hub/finetune/<model>/qlora.yaml-shaped file (litgpt 00af8b0d keys): checkpoint_dir → Hub id,
    bf16-true → bf16, bnb.nf4 → qlora without double quant, the six lora_* flags → HF targets, train.micro_batch_size
    and max_seq_length; a file without lora_* keys is finetune_full's."""
    from pathlib import Path

    from app.importers import load_plan_files

    base = Path(str(tmp_path))
    qlora = base / "qlora.yaml"
    qlora.write_text("checkpoint_dir: checkpoints/meta-llama/Llama-2-7b-hf\nprecision: bf16-true\nquantize: bnb.nf4\n"
                     "lora_r: 32\nlora_alpha: 16\nlora_dropout: 0.05\nlora_query: true\nlora_key: false\n"
                     "lora_value: true\nlora_projection: false\nlora_mlp: true\nlora_head: false\nlogger_name: csv\n"
                     "train:\n  micro_batch_size: 2\n  max_seq_length: 512\n  epochs: 4\n"
                     "optimizer:\n  class_path: torch.optim.AdamW\n")
    body, notes = load_plan_files([qlora])
    assert notes[0].message.startswith("detected litgpt finetune config")
    assert body["model"] == "meta-llama/Llama-2-7b-hf" and body["method"] == "qlora"
    assert body["lora"] == {"r": 32, "lora_alpha": 16, "lora_dropout": 0.05,
                            "target_modules": ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]}
    assert body["quantization"]["bnb_4bit_use_double_quant"] is False
    # no global_batch_size: the finetune scripts' 16, so 16 // devices 1 // micro_batch_size 2 = 8 accumulation steps
    assert body["training"] == {"framework": "litgpt", "gradient_checkpointing": False, "precision": "bf16",
                                "micro_batch_size": 2, "seq_len": 512, "gradient_accumulation_steps": 8,
                                "optim": "adamw_torch"}
    estimate(PlanRequest.model_validate(body))  # a valid request
    full = base / "full.yaml"
    full.write_text("checkpoint_dir: checkpoints/meta-llama/Llama-3.2-1B\nprecision: bf16-true\nlogger_name: csv\n"
                    "train:\n  micro_batch_size: 4\n  max_seq_length: 512\n")
    body, _ = load_plan_files([full])
    assert body["method"] == "full" and "lora" not in body


def test_cli_framework_litgpt() -> None:
    from .test_cli import run

    out = run("estimate", "--model", "meta-llama/Llama-3.2-1B", "--method", "qlora", "--framework", "litgpt", "--json")
    assert out.returncode == 0, out.stderr
    assert '"Framework: litgpt (litgpt 0.4.13.dev1' in out.stdout


def test_no_activation_checkpointing_on_one_gpu() -> None:
    """finetune/lora.py sets activation_checkpointing_policy only on its multi-GPU FSDPStrategy: on one GPU the
    request's gradient_checkpointing does not change litgpt's estimate, and the assumptions say so."""
    on, off = estimate(_req(gradient_checkpointing=True)), estimate(_req(gradient_checkpointing=False))
    assert on.memory.peak == off.memory.peak
    assert any("no activation checkpointing" in a for a in on.assumptions)


def test_full_fine_tuning_loss_by_hand() -> None:
    """finetune/full.py, b 2 × s 8: ln_f keeps its fp32 input and (trainable weight) its fp32 normalised output
    (2·4·T·h + 4·T = 8256) and lm_head its bf16 input (a·T·h = 2048): 10304. Loss: the previous and this step's fp32
    logits (2·L = 32768) with either the bf16 originals (8192) or the shifted reshape copy 4·b·(s−1)·V = 14336:
    47104. Backward: the logits, the chunk gradients' concatenation and the slice's gradient, 3·L = 49152."""
    full = Shape(b=2, s=8, a=2, r=2, dropout=False, quantized=False, full=True)
    lp = head_terms(parse_config(TINY), full, Targets(False, False, False, False, False, False), old=False,
                    head_quantized=False)
    assert (lp.saved, lp.loss_forward, lp.loss_backward) == (10304, 47104, 49152)
