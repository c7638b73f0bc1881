"""Benchmark (not a test): litgpt's own GPT + LoRA training step traced on fake tensors, against the analytic model.

litgpt is not a dependency of the planner (docs/frameworks.md: it installs beside the pins, but nothing in the
service needs it). This script imports a litgpt source tree given on the command line — the releases the
published rows used, extracted from the Lightning-AI/litgpt repository (``git archive 8641822 lit_gpt`` for the
resource tables, ``git archive 00af8b0d litgpt`` for the config hub) or an installed ``litgpt`` — builds the
model as ``finetune/lora.py`` / ``finetune/full.py`` do under Fabric ``bf16-true`` (every parameter bf16; QLoRA:
every ``nn.Linear`` replaced by a bitsandbytes 4-bit layer, as Fabric's ``BitsandbytesPrecision._convert_layers``
does), and runs the loop of ``finetune/lora.py``: ``model(x, lm_head_chunk_size=128)`` through Fabric's
``convert_output`` (lightning's own ``HalfPrecision``), the last chunk shifted, ``chunked_cross_entropy``,
``backward``, ``optimizer.step``. It runs under the trace engine's :class:`app.trace.counter.LiveBytesCounter`
with the engine's CUDA stand-ins (flash attention, ``native_dropout``) and bitsandbytes 0.42's ``MatMul4Bit``
replayed, and prints the traced peak and its phase next to the planner's analytic ``memory.peak`` (less the cuBLAS
workspaces, which the trace's tensors do not include) for the same request (``training.framework`` ``litgpt``, or
``lit-gpt`` for the 8641822 tree), and litgpt's model's trainable parameter count beside ``parameters.trainable``
(litgpt's flags as :func:`app.core.litgpt.lora_targets` spells them: a fused q/k/v linear's parts as
``lora.enable_lora``). ``--precision bf16-mixed``
runs Fabric's ``bf16-mixed`` instead: fp32 parameters, the forward under bf16 autocast, ``MixedPrecision``'s
``convert_output``.

    PYTHONPATH=/tmp/litgpt-site .venv/bin/python bench/litgpt_trace.py --src /tmp/litgpt-8641822 --grid
    .venv/bin/python bench/litgpt_trace.py --src PATH --model Llama-2-7b-hf --method lora --mb 1 --seq 1304
    .venv/bin/python bench/litgpt_trace.py --src PATH --model stablelm-base-alpha-3b --precision bf16-mixed

The grid's models are litgpt configs the planner also knows: an HF ``config.json`` of the same shapes is built
from the litgpt ``Config`` (llama, mistral, gemma, gemma2; phi, gpt_neox and falcon for litgpt's LayerNorm +
``GptNeoxMLP`` parallel blocks, whose inventory the generic path builds with transformers in a worker).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIB = 2**30


def neox_config(cfg: Any) -> dict[str, Any]:
    """The HF phi / gpt_neox / falcon config.json of a litgpt ``GptNeoxMLP`` + ``LayerNorm`` config (phi-*,
    stablelm-base-alpha-* and pythia-*, falcon-*), built by transformers through the generic path."""
    common = {"hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
              "vocab_size": cfg.padded_vocab_size, "tie_word_embeddings": False, "layer_norm_eps": cfg.norm_eps,
              "max_position_embeddings": cfg.block_size}
    if cfg.name.startswith("phi"):
        return {"model_type": "phi", "architectures": ["PhiForCausalLM"], **common,
                "intermediate_size": cfg.intermediate_size, "num_key_value_heads": cfg.n_query_groups,
                "partial_rotary_factor": cfg.rotary_percentage, "hidden_act": "gelu_new"}
    if cfg.name.startswith("falcon"):
        mqa = cfg.n_query_groups == 1
        return {"model_type": "falcon", "architectures": ["FalconForCausalLM"], **common,
                "ffn_hidden_size": cfg.intermediate_size, "multi_query": mqa, "new_decoder_architecture": not mqa,
                "num_kv_heads": cfg.n_query_groups, "parallel_attn": cfg.parallel_residual, "bias": cfg.bias}
    return {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], **common,
            "intermediate_size": cfg.intermediate_size, "rotary_pct": cfg.rotary_percentage,
            "use_parallel_residual": cfg.parallel_residual, "hidden_act": "gelu"}


def hf_config(cfg: Any) -> dict[str, Any]:
    """The HF llama/mistral/phi3/gemma config.json with the shapes of a litgpt ``Config``."""
    mlp = getattr(cfg, "mlp_class_name", None) or cfg._mlp_class
    if mlp == "GptNeoxMLP":
        return neox_config(cfg)
    model_type = {"LLaMAMLP": "llama", "GemmaMLP": "gemma"}[mlp]
    extra: dict[str, Any] = {}
    if cfg.name.startswith("Phi-3"):  # HF Phi-3 fuses qkv_proj and gate_up_proj (litgpt splits fc_1 / fc_2)
        model_type, extra = "phi3", {"sliding_window": cfg.sliding_window_size}
    elif getattr(cfg, "sliding_window_size", None) and model_type == "llama":
        model_type = "mistral"  # the HF type whose litgpt configs use a sliding window
    if getattr(cfg, "attention_logit_softcapping", None):  # Gemma-2: soft-capped (eager) attention
        model_type = "gemma2"
        extra = {"attn_logit_softcapping": cfg.attention_logit_softcapping,
                 "final_logit_softcapping": cfg.final_logit_softcapping}
    return {
        "model_type": model_type,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_query_groups,
        "head_dim": cfg.head_size,
        "vocab_size": cfg.padded_vocab_size,
        "tie_word_embeddings": False,
        **extra,
    }


def trace(src: str, name: str, method: str, mb: int, seq: int, r: int = 8, alpha: int = 16, dropout: float = 0.05,
          targets: tuple[str, ...] = ("query", "value"), n_layer: int | None = None, double_quant: bool = False,
          steps: int = 2, dump: bool = False, mixed: bool = False) -> dict[str, Any]:
    """Trace ``steps`` steps of litgpt's loop; the last step's peak (bytes) and phase. ``mixed``: Fabric
    ``bf16-mixed`` (fp32 parameters, the forward under bf16 autocast — CPU autocast here, which like CUDA's runs
    litgpt's LayerNorm in fp32 on its fp32 residual input — and ``MixedPrecision.convert_output`` to fp32)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from app.core import PlanRequest
    from app.trace.counter import LiveBytesCounter
    from app.trace.cuda_kernels import _FlashAttention, bnb_dequantize_patch, cuda_dropout, transient_rules
    from app.trace.engine import _materialize, _real_tables

    sys.path.insert(0, src)
    old = (Path(src) / "lit_gpt").exists()
    if old:
        from lit_gpt import lora as L
        from lit_gpt.utils import chunked_cross_entropy
        kw = dict(r=r, alpha=alpha, dropout=dropout, **{f"to_{t}": True for t in targets})
    else:
        from litgpt import lora as L
        from litgpt.utils import chunked_cross_entropy
        kw = dict(lora_r=r, lora_alpha=alpha, lora_dropout=dropout, **{f"lora_{t}": True for t in targets})
    if method == "full":
        kw = {}
    if n_layer:
        kw["n_layer"] = n_layer
    config = L.Config.from_name(name, **kw)
    quant = method == "qlora"
    req = PlanRequest(model={"config": hf_config(config)}, method="qlora" if quant else "lora",
                      quantization={"bnb_4bit_use_double_quant": double_quant} if quant else {},
                      training={"framework": "lit-gpt" if old else "litgpt"})

    def sdpa(q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
             scale: Any = None, **_: Any) -> Any:
        # torch's CUDA SDPA: flash for bf16 without a mask (out in (b, s, h, d) memory, returned as (b, h, s, d))
        # with a mask (litgpt's sliding window): the memory-efficient kernel, which saves the mask for backward
        return _FlashAttention.apply(q, k, v, 1 if attn_mask is None else 32, attn_mask).transpose(1, 2)

    counter = LiveBytesCounter(transient_rules() if quant else None)
    torch.manual_seed(0)
    with ExitStack() as stack:
        import bitsandbytes as bnb

        # Fabric bf16-true init_module: parameters created in bf16 (bf16-mixed: fp32)
        torch.set_default_dtype(torch.float32 if mixed else torch.bfloat16)
        with torch.device("meta"):
            model = L.GPT(config)
        torch.set_default_dtype(torch.float32)
        if method != "full":
            L.mark_only_lora_as_trainable(model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if quant:
            convert(model, bnb, double_quant)
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        stack.enter_context(counter)
        stack.enter_context(cuda_dropout())
        stack.enter_context(bnb_dequantize_patch())
        orig_sdpa = torch.nn.functional.scaled_dot_product_attention
        torch.nn.functional.scaled_dot_product_attention = sdpa
        stack.callback(setattr, torch.nn.functional, "scaled_dot_product_attention", orig_sdpa)
        if quant:
            _real_tables(counter)
            stack.enter_context(bnb_042_matmul(bnb))
        _materialize(model, req, torch.bfloat16, True)
        # finetune/lora.py train(): model.max_seq_length = longest → the rope cache rebuilt in the default dtype
        del model.cos, model.sin
        model.max_seq_length = seq
        counter.track(list(model.parameters()) + list(model.buffers()))
        static_live = counter.live
        model.train()
        model.lm_head.register_forward_hook(lambda *_: counter.set_phase("loss"))
        if dump:
            def show(*_: Any) -> None:
                live = sorted((i for _, i in counter._info.items() if i.counted and i.phase != "setup"),
                              key=lambda i: -i.nbytes)
                print("live at ln_f:", sum(i.nbytes for i in live), "live total", counter.live)
                for i in live:
                    print("   ", i.nbytes, i.shape, i.dtype, i.op)
            model.transformer.ln_f.register_forward_pre_hook(show)
        params = [p for p in model.parameters() if p.requires_grad]
        # QLoRA: torch AdamW with its states made fp32 stands in for bnb PagedAdamW (32-bit states; those of
        # tensors with >= 1e5 elements are paged, outside the allocator, and excluded below)
        optimizer = torch.optim.AdamW(params, lr=1e-4, foreach=True)
        from lightning.fabric.plugins.precision import HalfPrecision, MixedPrecision

        fabric_precision = MixedPrecision("bf16-mixed", "cpu") if mixed else HalfPrecision("bf16-true")
        # _FabricModule.forward: the module under precision.forward_context(), then convert_output
        context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if mixed else contextlib.nullcontext
        logits = None
        for step in range(steps):
            gc.collect()
            if step == steps - 1:
                counter.reset_peak()
            x = torch.randint(0, config.padded_vocab_size, (mb, seq))
            y = torch.randint(0, config.padded_vocab_size, (mb, seq))
            counter.set_phase("forward")
            # Fabric's _FabricModule.forward: the output goes through precision.convert_output (lightning's own
            # HalfPrecision for bf16-true; BitsandbytesPrecision does the same) before the loop gets it
            if method == "full":  # finetune/full.py: whole logits, the loss chunked over a shifted copy
                with context():
                    out = model(x)
                logits = fabric_precision.convert_output(out)
                del out
                loss = chunked_cross_entropy(logits[..., :-1, :], y[..., 1:])
            else:  # finetune/lora.py
                with context():
                    out = model(x, lm_head_chunk_size=128)
                logits = fabric_precision.convert_output(out)
                del out
                logits[-1] = logits[-1][..., :-1, :]
                loss = chunked_cross_entropy(logits, y[..., 1:])
            counter.set_phase("backward")
            loss.backward()
            counter.set_phase("optimizer")
            optimizer.step()
            optimizer.zero_grad()
            if quant and step == 0:
                # bnb PagedAdamW: fp32 states, paged (outside the allocator) for tensors of >= 1e5 elements
                counter.exclude([t for s in optimizer.state.values() for k, t in s.items()
                                 if k != "step" and t.numel() >= 100_000])
        del logits, loss
    sys.path.remove(src)
    return {"peak": counter.peak, "phase": counter.snapshot.phase, "req": req, "static": static_live,
            "largest": counter.snapshot.largest, "trainable": trainable}


class _MatMul4Bit042:
    """bitsandbytes 0.41/0.42 ``MatMul4Bit`` (``autograd/_functions.py``), the releases the litgpt rows ran: the
    forward dequantizes the whole weight to the input dtype for any number of rows and keeps its input
    (``ctx.tensors = (A, B)``); the backward dequantizes it again for the input's gradient."""

    @staticmethod
    def make(bnb: Any) -> Any:
        import torch

        class Fn(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, A: Any, B: Any, bias: Any, state: Any) -> Any:
                w = bnb.functional.dequantize_4bit(B, state).to(A.dtype)
                out = torch.nn.functional.linear(A, w, bias)  # w: (out, in), quant_state.shape
                ctx.state = state
                ctx.tensors = (A, B)
                return out

            @staticmethod
            def backward(ctx: Any, grad: Any) -> Any:
                _a, B = ctx.tensors
                w = bnb.functional.dequantize_4bit(B, ctx.state).to(grad.dtype)
                return torch.matmul(grad, w), None, None, None

        return Fn


def bnb_042_matmul(bnb: Any) -> Any:
    from contextlib import contextmanager

    fn = _MatMul4Bit042.make(bnb)

    @contextmanager
    def patched() -> Any:
        original = bnb.nn.modules.bnb.matmul_4bit

        def matmul_4bit(A: Any, B: Any, quant_state: Any = None, out: Any = None, bias: Any = None) -> Any:
            return fn.apply(A, B, bias, quant_state)

        bnb.nn.modules.bnb.matmul_4bit = matmul_4bit
        try:
            yield
        finally:
            bnb.nn.modules.bnb.matmul_4bit = original

    return patched()


def convert(model: Any, bnb: Any, double_quant: bool) -> None:
    """Fabric ``BitsandbytesPrecision._convert_layers``: every ``torch.nn.Linear`` (lm_head included) becomes a
    bitsandbytes 4-bit layer (nf4, bf16 compute)."""
    import torch

    for name, child in list(model.named_children()):
        if isinstance(child, torch.nn.Linear):
            new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                    compute_dtype=torch.bfloat16, quant_type="nf4",
                                    compress_statistics=double_quant, device="meta")
            new.weight.requires_grad_(False)
            if new.bias is not None:
                new.bias.requires_grad_(False)
            setattr(model, name, new)
        else:
            convert(child, bnb, double_quant)


FLAG_NAMES: dict[str, list[str]] = {
    "query": ["q_proj"], "key": ["k_proj"], "value": ["v_proj"], "projection": ["o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"], "head": ["lm_head"]}
"""litgpt's LoRA flags as llama module names (the importer's ``TARGETS``); :func:`app.core.litgpt.lora_targets`
spells them in each model's own names, with ``enable_lora`` for a fused q/k/v linear adapted in part."""


def analytic(req: Any, method: str, mb: int, seq: int, r: int, alpha: int, dropout: float,
             targets: tuple[str, ...], precision: str = "bf16") -> tuple[int, int]:
    """The planner's (memory.peak without the cuBLAS workspaces, which the trace's tensors do not include — as
    bench/trace_grid.py compares — and parameters.trainable) for the traced run."""
    from app.core import PlanRequest, estimate
    from app.core.catalog import gpu
    from app.core.litgpt import lora_targets
    from app.core.overhead import cublas_workspace_bytes
    from app.models.resolve import resolve_request

    body = req.model_dump(exclude_unset=True)
    body["method"] = method
    body["training"] = {"framework": req.training.framework, "micro_batch_size": mb, "seq_len": seq,
                        "precision": precision, "gradient_checkpointing": False}
    if method != "full":
        names, enable = lora_targets(req.model.config["model_type"], [m for t in targets for m in FLAG_NAMES[t]])
        body["lora"] = {"r": r, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": names,
                        "enable_lora": enable}
    # phi, GPT-NeoX and Falcon have no hand-written rules: their inventory is built by transformers (a worker)
    request = resolve_request(PlanRequest(**body), fit_peak=False)[0]
    res = estimate(request)
    return res.memory.peak - cublas_workspace_bytes(gpu(request.hardware.gpu).arch), res.parameters.trainable


GRID = [
    # (litgpt config, method, mb, seq, r, dropout, targets, n_layer)
    ("Llama-2-7b-hf", "lora", 1, 512, 8, 0.05, ("query", "value"), 2),
    ("Llama-2-7b-hf", "lora", 2, 1024, 8, 0.05, ("query", "value"), 2),
    ("Llama-2-7b-hf", "lora", 1, 512, 8, 0.0, ("query", "value"), 2),
    ("Llama-2-7b-hf", "lora", 1, 512, 8, 0.05, ("query", "key", "value", "projection", "mlp", "head"), 2),
    ("Llama-2-7b-hf", "qlora", 1, 512, 8, 0.05, ("query", "value"), 2),
    ("Llama-2-7b-hf", "full", 2, 512, 8, 0.0, (), 2),
    ("Llama-3.2-1B", "lora", 1, 512, 32, 0.05, ("query", "value"), 2),
    ("Llama-3.2-1B", "qlora", 2, 512, 32, 0.05, ("query", "value"), 2),
    ("Llama-3.2-1B", "full", 4, 512, 8, 0.0, (), 2),
    ("tiny-llama-1.1b", "lora", 4, 512, 32, 0.05, ("query", "key", "value", "projection", "mlp", "head"), 2),
    ("Mistral-7B-v0.1", "lora", 2, 512, 32, 0.05, ("query", "value"), 2),
    ("Llama-2-13b-hf", "lora", 1, 1304, 8, 0.05, ("query", "value"), 3),
    ("Llama-2-7b-hf", "qlora", 2, 512, 32, 0.05, ("query", "value"), 8),
    ("Gemma-2b", "lora", 2, 512, 8, 0.1, ("query", "key", "value", "projection", "mlp", "head"), 2),
    ("Gemma-2-2b", "lora", 2, 512, 8, 0.1, ("query", "key", "value", "projection", "mlp", "head"), 2),
    # LayerNorm + GptNeoxMLP, parallel residual (phi and Falcon-7B share norm_1; GPT-NeoX and Falcon-40B do not)
    ("phi-1_5", "lora", 1, 1044, 8, 0.05, ("query", "value"), 2),
    ("phi-2", "lora", 4, 512, 8, 0.05, ("query", "key", "value", "projection", "mlp", "head"), 2),
    ("phi-2", "qlora", 4, 512, 8, 0.05, ("query", "value"), 2),
    ("phi-2", "full", 2, 512, 8, 0.0, (), 2),
    ("stablelm-base-alpha-3b", "lora", 2, 1034, 8, 0.05, ("query", "key", "value"), 2),
    ("stablelm-base-alpha-3b", "qlora", 1, 1034, 8, 0.05, ("query", "key", "value", "projection", "mlp"), 2),
    ("falcon-7b", "lora", 1, 512, 32, 0.05, ("query", "key", "value"), 2),
    ("falcon-7b", "qlora", 1, 512, 32, 0.05, ("query", "key", "value", "mlp", "head"), 2),
    ("falcon-40b", "lora", 1, 512, 8, 0.05, ("query", "key", "value", "projection"), 2),
    # a fused q/k/v linear adapted in part (LoRAQKVLinear enable_lora; Phi-3's gate_up_proj as fc_1 and fc_2)
    ("stablelm-base-alpha-3b", "lora", 2, 1034, 8, 0.05, ("query", "value"), 2),
    ("falcon-7b", "lora", 1, 512, 32, 0.05, ("query", "value"), 2),
    ("falcon-7b", "qlora", 1, 512, 32, 0.05, ("query", "value"), 2),
    ("falcon-40b", "lora", 1, 512, 8, 0.05, ("query", "key"), 2),
    ("Phi-3-mini-4k-instruct", "lora", 2, 512, 8, 0.05, ("query", "value", "mlp"), 2),
    ("Phi-3-mini-4k-instruct", "qlora", 1, 1024, 8, 0.05, ("key", "projection", "mlp", "head"), 2),
]
MIXED_GRID = [
    # Fabric bf16-mixed (lit-gpt 8641822's default): fp32 weights cast per use, lm_head once per chunk
    ("stablelm-base-alpha-3b", "lora", 1, 1034, 8, 0.05, ("query", "key", "value"), 2),
    ("Llama-2-7b-hf", "lora", 1, 512, 8, 0.05, ("query", "value"), 2),
    ("phi-1_5", "full", 1, 512, 8, 0.0, (), 2),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, help="litgpt source tree (a folder holding lit_gpt/ or litgpt/)")
    ap.add_argument("--grid", action="store_true")
    ap.add_argument("--model", default="Llama-2-7b-hf")
    ap.add_argument("--method", default="lora", choices=["lora", "qlora", "full"])
    ap.add_argument("--mb", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--targets", default="query,value")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--precision", default="bf16-true", choices=["bf16-true", "bf16-mixed"])
    ap.add_argument("--dump", action="store_true", help="list the live step tensors when the final norm starts")
    args = ap.parse_args()
    cases = ([(*c, "bf16-true") for c in GRID] + [(*c, "bf16-mixed") for c in MIXED_GRID] if args.grid else
             [(args.model, args.method, args.mb, args.seq, args.r, args.dropout, tuple(args.targets.split(",")),
               args.layers, args.precision)])
    print(f"{'model':<18} {'method':<6} {'mb':>3} {'seq':>5} {'r':>3} {'drop':>5} {'targets':<28} {'L':>3} "
          f"{'trace GiB':>10} {'analytic':>9} {'err %':>7}  {'trainable':>12} ours  phase")
    errs: list[float] = []
    params_equal = 0
    for name, method, mb, seq, r, dropout, targets, n_layer, precision in cases:
        t0 = time.perf_counter()
        mixed = precision == "bf16-mixed"
        try:
            res = trace(args.src, name, method, mb, seq, r=r, dropout=dropout, targets=targets, n_layer=n_layer,
                        dump=args.dump, mixed=mixed)
        except KeyError:
            print(f"{name:<18} not a config of this litgpt source")
            continue
        ours, trainable = analytic(res["req"], method, mb, seq, r, 16, dropout, targets,
                                   "bf16-mixed" if mixed else "bf16")
        err = 100 * (ours - res["peak"]) / res["peak"]
        errs.append(abs(err))
        params_equal += trainable == res["trainable"]
        label = method + ("*" if mixed else "")
        print(f"{name:<18} {label:<6} {mb:>3} {seq:>5} {r:>3} {dropout:>5} {','.join(targets)[:28]:<28} "
              f"{n_layer or '-':>3} {res['peak'] / GIB:10.3f} {ours / GIB:9.3f} {err:+7.2f}  "
              f"{res['trainable']:>12,} {'=' if trainable == res['trainable'] else f'!= {trainable:,}'}  "
              f"{res['phase']} ({time.perf_counter() - t0:.0f}s)")
        if not args.grid:
            print("    static bytes (weights, constants, adapters, buffers):", res["static"])
            for t in res["largest"]:
                print("   ", t)
    errs.sort()
    print(f"\n{len(errs)} cases: median |error| {errs[len(errs) // 2]:.2f}%, max {errs[-1]:.2f}%, "
          f"within 2%: {sum(e <= 2 for e in errs)}; trainable parameters equal to litgpt's model: {params_equal}")


if __name__ == "__main__":
    main()
