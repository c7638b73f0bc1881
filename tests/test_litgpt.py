"""training.framework litgpt / lit-gpt: litgpt's own GPT model and loop, analytic (app/core/litgpt.py).

Expected figures are derived by hand from litgpt's source (cited in app/core/litgpt.py) in the comments; the same
formulas were checked against litgpt's real code traced on fake tensors (bench/litgpt_trace.py: 33 cases at
00af8b0d and 22 at 8641822, all within 2%, each with the trainable parameter count of litgpt's own model), which
needs a litgpt source tree and is not run here.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.accuracy.rows import Skip, map_row, read_rows
from app.core import PlanRequest, estimate
from app.core.architectures import ArchSpec, parse_config
from app.core.errors import PlanError
from app.core.litgpt import (
    Block,
    Shape,
    Targets,
    block_of,
    head_terms,
    keeps_first_layer_input,
    layer_saved,
    lora_targets,
    previous_step_inputs,
)
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
    assert previous_step_inputs(parse_config(TINY), Shape(2, 8, 2, 2, True, True, False), QV) == 22528


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
    # config_hub/finetune/phi-2/lora.yaml's flags in phi's module names (dense: the attention output; fc1/fc2)
    phi = base / "phi.yaml"
    phi.write_text("checkpoint_dir: checkpoints/microsoft/phi-2\nprecision: bf16-true\nlora_r: 8\nlora_query: true\n"
                   "lora_key: true\nlora_value: true\nlora_projection: true\nlora_mlp: true\nlora_head: true\n"
                   "train:\n  micro_batch_size: 4\n  max_seq_length: 512\n")
    body, _ = load_plan_files([phi])
    assert body["lora"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2", "lm_head"]


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


# A tiny phi-like parallel block (LayerNorm + GptNeoxMLP): h 64, fc 160, 4 heads of 16 (MHA), vocab 256.
PHI = ArchSpec(model_type="phi", vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=4, head_dim=16, tie_word_embeddings=False)
SHARED = Block(layer_norm=True, gelu_mlp=True, parallel=True, shared_norm=True, kv_dim=64)
NEOX = Block(layer_norm=True, gelu_mlp=True, parallel=True, shared_norm=False, kv_dim=64)


def test_parallel_block_by_hand() -> None:
    """litgpt ``Block`` with ``parallel_residual`` (phi, Falcon-7B: ``shared_attention_norm``), a middle layer, T = 16,
    a = 2, LoRA r 2 on q and v with dropout: norm_1 (``native_layer_norm``: its input a·T·h = 2048 and fp32 mean
    and rstd 8·T = 128) 2176; LoRAQKVLinear as in the llama block: dropout output 2048 + mask 1024 + after_A 128 +
    zero_pad's conv output a·T·(q+kv) 4096; MHA attention 6144 + 4096; flash output 2048 + logsumexp 256; GptNeoxMLP:
    gelu keeps fc's output a·T·I = 5120 (proj is frozen: nothing else). Total 27136. The first layer's input needs
    no gradient, nor then does the MLP's (it reads norm_1's output): no norm (2176), no mask (1024), no gelu input
    (5120): 18816. GPT-NeoX's own norm_2 reads the same block input, adding only its mean and rstd (128): 27264."""
    assert layer_saved(PHI, X, QV, old=False, layer=1, block=SHARED) == 27136
    assert layer_saved(PHI, X, QV, old=False, layer=0, block=SHARED) == 18816
    assert layer_saved(PHI, X, QV, old=True, layer=1, block=SHARED) == 27136  # LayerNorm: the same at 8641822
    assert layer_saved(PHI, X, QV, old=False, layer=1, block=NEOX) == 27264
    assert layer_saved(PHI, X, QV, old=False, layer=0, block=NEOX) == 18816


def test_parallel_block_4bit_inputs_and_head_by_hand() -> None:
    """bitsandbytes ≤ 0.42 inputs kept per parallel shared-norm layer: norm_1's output (read by qkv and fc),
    the attention output and gelu's a·T·(h + q + I) = 2·16·288 = 9216, two layers 18432, less the first layer's
    frozen MLP output (a·T·I = 5120): 13312. The final LayerNorm keeps a·T·h + 8·T = 2176."""
    x = Shape(2, 8, 2, 2, True, True, False)
    assert previous_step_inputs(PHI, x, QV, SHARED) == 13312
    assert head_terms(PHI, X, QV, old=False, head_quantized=False, block=SHARED).saved == 2176


def test_block_of_a_config() -> None:
    """phi and Falcon-7B share norm_1 (one norm per HF layer); GPT-NeoX and Falcon-40B have two; a GPT-NeoX
    config with ``use_parallel_residual`` false is sequential; llama-family configs keep litgpt's RMSNorm blocks."""
    assert block_of(PHI, {}, 1, 64) == SHARED
    neox = replace(PHI, model_type="gpt_neox")
    assert block_of(neox, {"use_parallel_residual": True}, 2, 64) == NEOX
    assert block_of(neox, {"use_parallel_residual": False}, 2, 64).parallel is False
    assert block_of(parse_config(TINY), {}, 2, 64) == Block()


def test_first_layer_inputs_without_gradient() -> None:
    """The first layer's frozen linears on the frozen embedding's normed output keep nothing for backward (under
    bf16-mixed: no weight cast): q/k/v always; in a parallel block the MLP too, whose output needs a gradient only
    through LoRA on fc (traced under autocast: StableLM-alpha and Llama-2 within 0.35%, bench/litgpt_trace.py)."""
    mlp = Targets(True, False, True, False, True, False)
    assert [keeps_first_layer_input(n, Block(), QV) for n in ("q_proj", "o_proj", "gate_proj", "down_proj")] == [
        False, True, True, True]
    assert [keeps_first_layer_input(n, NEOX, QV) for n in ("query_key_value", "dense", "dense_h_to_4h",
                                                           "dense_4h_to_h")] == [False, True, False, False]
    assert [keeps_first_layer_input(n, SHARED, mlp) for n in ("fc1", "fc2")] == [False, True]


def test_parallel_block_models_through_the_generic_path() -> None:
    """Falcon-7B (tiiuae/falcon-7b config.json) under litgpt: transformers' FalconForCausalLM gives the inventory.
    By hand: word embeddings 65024·4544 = 295,469,056; per layer input_layernorm 2·4544 = 9,088, query_key_value
    4544·(4544 + 2·64) = 21,229,568 (71 query heads, one key/value head), dense 4544² = 20,647,936,
    dense_h_to_4h and dense_4h_to_h 2·4544·18176 = 165,183,488: 207,070,080, × 32 = 6,626,242,560; ln_f 9,088.
    transformers ties lm_head (6,921,720,704); litgpt's GPT does not: + 295,469,056 = 7,217,189,760. litgpt's
    lora_query/lora_value on the fused linear (``LoRAQKVLinear``, enable_lora (q, v)): lora_A (2·32, 4544) =
    290,816 and lora_B ((4544 + 64), 32) = 147,456 per layer, × 32 = 14,024,704 trainable (litgpt's own GPT built
    from its falcon-7b config counts the same: bench/litgpt_trace.py). enable_lora null is all three parts:
    lora_A (3·32, 4544) + lora_B (4672, 32) = 585,728 per layer, 18,743,296 — where PEFT, adapting the linear
    whole, would add 32·32·(4544 + 4672) = 9,437,184."""
    from app.accuracy.models import CONFIGS
    from app.models.resolve import resolve_request

    names, enable = lora_targets("falcon", ["q_proj", "v_proj"])
    assert (names, enable) == (["query_key_value"], [True, False, True])
    body = {"model": {"config": CONFIGS["falcon-7b"][0]}, "method": "lora",
            "lora": {"r": 32, "target_modules": names, "enable_lora": enable},
            "training": {"framework": "litgpt", "micro_batch_size": 1, "seq_len": 512}}
    res = estimate(resolve_request(PlanRequest.model_validate(body), fit_peak=False)[0])
    assert (res.parameters.total, res.parameters.trainable) == (7_217_189_760, 14_024_704)
    assert res.peak.provisional is False
    assert any("litgpt's own GPT" in a for a in res.assumptions)
    body["lora"]["enable_lora"] = None
    whole = estimate(resolve_request(PlanRequest.model_validate(body), fit_peak=False)[0])
    assert whole.parameters.trainable == 18_743_296


def test_fused_qkv_parts_by_hand() -> None:
    """litgpt's ``LoRAQKVLinear`` on a fused q/k/v linear adapts the enabled parts only; Phi-3's ``gate_up_proj``
    is litgpt's fc_1 and fc_2, one ``LoRALinear`` each (``litgpt/lora.py``). Phi-3-mini (h 3072, MLP 8192, 32
    layers, 32 heads: q = k = v = 3072), r 8, lora_query + lora_value + lora_mlp, per layer: qkv lora_A (16, 3072)
    = 49,152 and lora_B (6144, 8) = 49,152; fc_1 and fc_2 8·3072 + 8192·8 = 90,112 each; proj 8·8192 + 3072·8 =
    90,112; 368,640 × 32 = 11,796,480 (litgpt's GPT of its Phi-3-mini-4k-instruct config: the same). PEFT on
    qkv_proj, gate_up_proj and down_proj adapts 11,010,048 (one lora_A for gate and up: 32 · 8·3072 fewer)."""
    names, enable = lora_targets("phi3", ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"])
    assert (names, enable) == (["qkv_proj", "gate_up_proj", "down_proj"], [True, False, True])
    body = {"model": "microsoft/Phi-3-mini-4k-instruct", "method": "lora",
            "lora": {"r": 8, "target_modules": names, "enable_lora": enable}, "training": {"framework": "litgpt"}}
    assert estimate(PlanRequest.model_validate(body)).parameters.trainable == 11_796_480
    body["training"] = {"framework": "hf-trainer"}
    body["lora"]["enable_lora"] = None
    assert estimate(PlanRequest.model_validate(body)).parameters.trainable == 11_010_048
    # all three of q, k, v on the fused linear: enable_lora left null (its default: every part)
    assert lora_targets("gpt_neox", ["q_proj", "k_proj", "v_proj"]) == (["query_key_value"], None)
    assert lora_targets("llama", ["q_proj", "v_proj"]) == (["q_proj", "v_proj"], None)


@pytest.mark.parametrize(("framework", "model", "enable", "says"), [
    ("hf-trainer", "microsoft/Phi-3-mini-4k-instruct", [True, False, True], "LoRAQKVLinear"),
    ("litgpt", "microsoft/Phi-3-mini-4k-instruct", [False, False, False], "enables none"),
    ("litgpt", "meta-llama/Llama-3.2-1B", [True, False, True], "q_proj / k_proj / v_proj"),
])
def test_enable_lora_refused(framework: str, model: str, enable: list[bool], says: str) -> None:
    """``lora.enable_lora`` is litgpt's: a PEFT recipe adapts a linear whole, some part must be enabled, and a
    model with separate q/k/v_proj names its parts in target_modules."""
    tm = ["qkv_proj"] if "Phi-3" in model else ["q_proj"]
    body = {"model": model, "method": "lora", "lora": {"target_modules": tm, "enable_lora": enable},
            "training": {"framework": framework}}
    with pytest.raises(PlanError) as exc:
        estimate(PlanRequest.model_validate(body))
    assert exc.value.loc == ("lora", "enable_lora") and says in exc.value.message


def test_fused_qkv_parts_keep_zero_pads_source() -> None:
    """StableLM-alpha-3B (GPT-NeoX: one fused query_key_value, MHA h 4096), lora_query + lora_value, r 8, b 1, s 512
    (T 512), bf16, dropout: against all three parts, each of the 15 layers after the first keeps 2·512·8 = 8 KiB
    less of lora_A's output (``after_A``, T·r per part) and zero_pad's index_copy source (T·(q + v) = 512·8192
    elements, 8 MiB); the first layer the same. 16 · (8 MiB − 8 KiB) = 16 · 8,380,416 bytes more."""
    from app.accuracy.models import CONFIGS
    from app.models.resolve import resolve_request

    base = {"model": {"config": CONFIGS["StableLM-base-alpha-3B"][0]}, "method": "lora",
            "lora": {"r": 8, "lora_dropout": 0.05, "target_modules": ["query_key_value"]},
            "training": {"framework": "litgpt", "micro_batch_size": 1, "seq_len": 512}}
    whole = estimate(resolve_request(PlanRequest.model_validate(base), fit_peak=False)[0])
    base["lora"]["enable_lora"] = [True, False, True]
    parts = estimate(resolve_request(PlanRequest.model_validate(base), fit_peak=False)[0])
    assert parts.memory.activations - whole.memory.activations == 16 * (2 * 512 * 8192 - 2 * 512 * 8)


def test_published_parallel_block_rows() -> None:
    """The lit-gpt resource tables' phi-1.5 and StableLM-alpha-3B rows and the config hub's phi-2 and Falcon-7B
    rows are compared (their models built through the generic path; litgpt's flags in each model's own names);
    Falcon-40B LoRA on one 40 GB A100 (~84 GB of bf16 weights alone) is predicted not to fit, as it ran out of
    memory."""
    from app.accuracy.table import compare
    from app.models.resolve import resolve_request

    ids = ("59", "64", "78", "111", "138")
    mapped, skipped = compare([r for r in read_rows() if r["row_id"] in ids],
                              prepare=lambda req: resolve_request(req, fit_peak=False)[0])
    assert not skipped
    by_id = {mp.row["row_id"]: mp for mp in mapped}
    assert by_id["59"].req.lora.target_modules == ["q_proj", "v_proj"]
    assert by_id["64"].req.lora.target_modules == ["query_key_value"]
    assert by_id["138"].req.lora.target_modules == ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2", "lm_head"]
    assert by_id["78"].predicted_fits is False
    for rid in ("59", "64", "111", "138"):
        assert by_id[rid].error is not None and abs(by_id[rid].error) < 0.05, (rid, by_id[rid].error)


def test_bf16_mixed_casts_lm_head_per_chunk() -> None:
    """Fabric ``bf16-mixed``: fp32 weights under bf16 autocast. Autocast caches the cast of a weight that requires
    grad, not a frozen one, so LoRA's chunked head casts the V×h lm_head again for every 128-position chunk, each
    kept by that chunk's mm: 300 tokens → 3 chunks × 2 bytes × 256 × 64 = 98304 bytes beyond bf16-true's head;
    and the norms read the fp32 residual stream (the fp32 embedding's output): ln_f keeps 4·T·h + 4·T (old RMSNorm,
    lit-gpt) instead of 2·T·h + 2·T, T = 600: 2·600·64 + 2·600 = 78000 more. Full fine-tuning casts lm_head once
    (cached): 32768, and the trainable norm weight's x_normed is fp32 too (2·600·64 more). The real lit-gpt 8641822
    step of StableLM-alpha-3B traced under autocast is 25.126 GiB, published 25.071 GiB (bench/litgpt_trace.py
    --precision bf16-mixed)."""
    from app.core.activations import activation_model
    from app.core.adapters import plan_adapters
    from app.core.estimate import resolve_inventory
    from app.core.precision import dtypes_for

    def saved_head(precision: str, method: str = "lora") -> int:
        req = PlanRequest.model_validate({
            "model": {"config": TINY}, "method": method, "lora": {"r": 2, "target_modules": ["q_proj", "v_proj"]},
            "training": {"framework": "lit-gpt", "micro_batch_size": 2, "seq_len": 300, "precision": precision}})
        _, inv = resolve_inventory(req)
        return activation_model(inv, plan_adapters(inv, req.lora, method=req.method), req, dtypes_for(req)).saved_head

    assert saved_head("bf16-mixed") - saved_head("bf16") == 3 * 2 * 256 * 64 + 78000
    # full: one cached cast; ln_f's fp32 input and rsqrt, and the fp32 x_normed its trainable weight keeps
    assert saved_head("bf16-mixed", "full") - saved_head("bf16", "full") == 2 * 256 * 64 + 78000 + 2 * 600 * 64


def test_default_targets_are_finetune_loras() -> None:
    """Without target_modules a litgpt run adapts what ``litgpt finetune_lora`` does by default (lora_query,
    lora_value), not PEFT's default for the architecture. Phi-3-mini (32 layers, h 3072, MHA), r 8: the fused qkv
    with q and v enabled, 16·3072 + 6144·8 = 98,304 per layer, 3,145,728 (PEFT has no Phi-3 default: 422 under the
    HF recipe). StableLM-alpha-3B (16 layers, h 4096): 16·4096 + 8192·8 = 131,072 per layer, 2,097,152 (PEFT's
    default, the whole query_key_value, would be litgpt's three parts: 3,145,728). Llama-3.2-1B: q_proj and
    v_proj either way."""
    from app.accuracy.models import CONFIGS
    from app.models.resolve import resolve_request

    phi3 = {"model": "microsoft/Phi-3-mini-4k-instruct", "method": "lora", "training": {"framework": "litgpt"}}
    assert estimate(PlanRequest.model_validate(phi3)).parameters.trainable == 3_145_728
    with pytest.raises(PlanError) as exc:
        estimate(PlanRequest.model_validate({**phi3, "training": {"framework": "hf-trainer"}}))
    assert exc.value.loc == ("lora", "target_modules")
    neox = {"model": {"config": CONFIGS["StableLM-base-alpha-3B"][0]}, "method": "lora",
            "training": {"framework": "litgpt"}}
    req = resolve_request(PlanRequest.model_validate(neox), fit_peak=False)[0]
    assert (req.lora.target_modules, req.lora.enable_lora) == (["query_key_value"], [True, False, True])
    assert estimate(req).parameters.trainable == 2_097_152
    llama = {"model": "meta-llama/Llama-3.2-1B", "method": "lora"}
    assert (estimate(PlanRequest.model_validate({**llama, "training": {"framework": "litgpt"}})).parameters.trainable
            == estimate(PlanRequest.model_validate(llama)).parameters.trainable)
