""""Make it fit" (app/core/levers.py), GET/POST /api/v1/levers, and the page's notes and lever links.

Every lever's total is checked against an independent ``estimate`` of the request built here from the
lever's ``changes`` (not the lever's own ``request``), so a lever that reports one plan and links another fails.
"""

from __future__ import annotations

import re
from html import unescape
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from fastapi.testclient import TestClient

from app.core import PlanRequest, estimate, format_bytes
from app.core.catalog import gpu
from app.core.levers import levers
from app.core.notes import surprises
from app.forms import parse_form
from app.main import app

client = TestClient(app)

# The example, Qwen3-32B QLoRA on one RTX 5090 (31.84 GiB), at 3.5k tokens: it does not fit (38.13 GiB) and
# no fp32 upcast makes it fit (30.64 GiB). At the 4k the simulated-allocator reserve (docs/allocator.md)
# puts the no-upcast plan at 32.09 GiB, just over the card, so that length needs a second lever.
QWEN32_5090 = {"model": "Qwen/Qwen3-32B", "method": "qlora", "training": {"seq_len": 3584},
               "hardware": {"gpu": "nvidia-rtx-5090"}}
FULL_8B_4090 = {"model": "meta-llama/Llama-3.1-8B", "method": "full",
                "training": {"seq_len": 4096, "micro_batch_size": 8, "gradient_checkpointing": False},
                "hardware": {"gpu": "nvidia-rtx-4090"}}
LORA_8B_MBS = {"model": "meta-llama/Llama-3.1-8B", "method": "lora", "lora": {"r": 256},
               "training": {"seq_len": 1024, "micro_batch_size": 12}, "hardware": {"gpu": "nvidia-rtx-4090"}}
# TRL SFT of Llama-3.1-8B at 16k tokens on one RTX 4090: the logits (16k × 128,256) and the saved layers do not fit
TRL_8B_16K = {"model": "meta-llama/Llama-3.1-8B", "method": "lora",
              "training": {"framework": "trl", "seq_len": 16384}, "hardware": {"gpu": "nvidia-rtx-4090"}}
# full fine-tuning of Llama-3.1-70B over 4 A100 80GB with ZeRO-3: 16 bytes per parameter / 4 > 80 GB
ZERO3_70B = {"model": "meta-llama/Llama-3.1-70B", "method": "full", "training": {"seq_len": 2048},
             "hardware": {"gpu": "nvidia-a100-80gb", "num_gpus": 4, "sharding": "zero3"}}


def _apply(body: dict[str, Any], changes: dict[str, Any]) -> PlanRequest:
    """The request body with dotted paths set, built from the JSON body (independently of the core)."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in body.items()}
    for path, value in changes.items():
        if "." in path:
            section, name = path.split(".")
            out.setdefault(section, {})[name] = value
        else:
            out[path] = value
    return PlanRequest.model_validate(out)


@pytest.mark.parametrize("body", [QWEN32_5090, FULL_8B_4090, LORA_8B_MBS, TRL_8B_16K, ZERO3_70B],
                         ids=["qwen32-qlora", "full-8b", "lora-mbs", "trl-16k", "zero3-70b"])
def test_each_lever_total_is_the_estimate_of_the_changed_request(body: dict[str, Any]) -> None:
    req = PlanRequest.model_validate(body)
    out = levers(req)
    current = estimate(req).memory.total
    vram = gpu(req.hardware.gpu).vram_bytes
    assert out.current_total_bytes == current and out.budget_bytes == vram and out.current_fits is False
    assert out.levers, "a plan that does not fit gets levers"
    for lv in out.levers:
        changed = _apply(body, lv.changes)
        assert lv.request == changed, lv.id
        total = estimate(changed).memory.total
        assert lv.total_bytes == total, lv.id
        budget = gpu(changed.hardware.gpu).vram_bytes
        assert lv.budget_bytes == budget and lv.fits == (total <= budget), lv.id
        assert lv.saves_bytes == current - total, lv.id
    # fitting levers come first
    fits = [lv.fits for lv in out.levers]
    assert fits == sorted(fits, reverse=True)


def test_qwen32_on_5090_no_upcast_is_the_fitting_lever() -> None:
    out = levers(PlanRequest.model_validate(QWEN32_5090))
    by_id = {lv.id: lv for lv in out.levers}
    no_upcast = by_id["no_fp32_upcast"]
    assert no_upcast.changes == {"quantization.prepare_kbit": False} and no_upcast.fits
    assert no_upcast.cost_kind == "fidelity"
    # shorter sequences: the largest multiple of 128 below 3584 that fits, and 128 more does not
    seq = by_id["seq_len"]
    value = seq.changes["training.seq_len"]
    assert value % 128 == 0 and value < 3584 and seq.fits
    over = _apply(QWEN32_5090, {"training.seq_len": value + 128})
    assert estimate(over).memory.total > gpu("nvidia-rtx-5090").vram_bytes
    # two 5090s with ZeRO-3 hold it (one does not), and the time model halves
    assert by_id["zero3"].changes == {"hardware.num_gpus": 2, "hardware.sharding": "zero3"}
    assert by_id["zero3"].time_factor == pytest.approx(0.5)
    # the cheapest rentable card in the catalog that holds the plan as it is
    g = gpu(by_id["gpu"].changes["hardware.gpu"])
    fitting = [f for f in estimate(PlanRequest.model_validate(QWEN32_5090)).fits if f.fits]
    prices = [gpu(f.gpu).price_usd_per_hour for f in fitting if gpu(f.gpu).price_usd_per_hour is not None]
    assert g.price_usd_per_hour == min(prices)


def test_switch_levers_liger_and_activation_offloading() -> None:
    """TRL at 16k tokens: Liger's fused linear cross-entropy and TRL's activation offloading are offered, each
    with the estimate of the switched plan; offloading names the host RAM it adds (memory.host_ram)."""
    out = levers(PlanRequest.model_validate(TRL_8B_16K))
    by_id = {lv.id: lv for lv in out.levers}
    assert by_id["use_liger_kernel"].changes == {"training.use_liger_kernel": True}
    off = by_id["activation_offloading"]
    assert off.changes == {"training.activation_offloading": True}
    host = estimate(_apply(TRL_8B_16K, off.changes)).memory.host_ram - estimate(
        PlanRequest.model_validate(TRL_8B_16K)).memory.host_ram
    assert host > 0 and f"{format_bytes(host)} more host RAM" in off.cost
    # the HF Trainer has no activation_offloading argument: the lever is TRL's only
    hf = {**TRL_8B_16K, "training": {"seq_len": 16384}}
    assert "activation_offloading" not in {lv.id for lv in levers(PlanRequest.model_validate(hf)).levers}


def test_liger_lever_left_out_where_liger_has_no_kernels() -> None:
    """Liger-Kernel has no apply_liger_kernel_to_gpt2: switching it on saves nothing, so no lever."""
    body = {"model": "openai-community/gpt2", "method": "full",
            "training": {"seq_len": 1024, "micro_batch_size": 64}, "hardware": {"gpu": "nvidia-rtx-4090"}}
    req = PlanRequest.model_validate(body)
    assert estimate(_apply(body, {"training.use_liger_kernel": True})).memory.total == estimate(req).memory.total
    assert "use_liger_kernel" not in {lv.id for lv in levers(req).levers}


def test_offload_levers_on_a_sharded_run() -> None:
    """ZeRO-3 over 4 cards: ZeRO-Offload (optimizer) and ZeRO-Infinity (parameters too) are offered, each saving
    what the estimate of the offloaded plan says and naming the host RAM it adds."""
    out = levers(PlanRequest.model_validate(ZERO3_70B))
    by_id = {lv.id: lv for lv in out.levers}
    assert by_id["offload_optimizer"].changes == {"hardware.offload_optimizer": "cpu"}
    assert by_id["offload_param"].changes == {"hardware.offload_param": "cpu", "hardware.offload_optimizer": "cpu"}
    assert by_id["offload_param"].saves_bytes > by_id["offload_optimizer"].saves_bytes > 0
    for lv in (by_id["offload_optimizer"], by_id["offload_param"]):
        assert "more host RAM (memory.host_ram)" in lv.cost
    # a run that does not shard has no offload lever (the planner refuses offload without ZeRO/FSDP)
    assert not {"offload_optimizer", "offload_param"} & {lv.id for lv in levers(
        PlanRequest.model_validate(FULL_8B_4090)).levers}


def test_micro_batch_lever_keeps_the_batch_with_accumulation() -> None:
    """The lever divides the micro-batch and multiplies training.gradient_accumulation_steps by the same factor, so
    its total is that of the accumulating run (the earlier micro-batches' gradients held: more than the same
    micro-batch without accumulation)."""
    for steps in (1, 3):
        body = {**LORA_8B_MBS, "training": {**LORA_8B_MBS["training"], "gradient_accumulation_steps": steps}}
        lv = next(lv for lv in levers(PlanRequest.model_validate(body)).levers if lv.id == "micro_batch_size")
        d = lv.changes["training.micro_batch_size"]
        assert 12 % d == 0 and d < 12
        assert f"gradient_accumulation_steps × {12 // d}" in lv.title
        assert lv.changes["training.gradient_accumulation_steps"] == steps * (12 // d)
        once = _apply(body, {"training.micro_batch_size": d, "training.gradient_accumulation_steps": 1})
        assert lv.total_bytes == estimate(_apply(body, lv.changes)).memory.total > estimate(once).memory.total
    # the micro-batch is searched with accumulation on: a budget that holds micro-batch 3 alone but not with the
    # accumulated gradients gets micro-batch 2 (the next divisor of 12), which fits
    three = estimate(_apply(LORA_8B_MBS, {"training.micro_batch_size": 3})).memory.total
    three_acc = estimate(_apply(LORA_8B_MBS, {"training.micro_batch_size": 3,
                                              "training.gradient_accumulation_steps": 4})).memory.total
    assert three < three_acc
    lv = next(lv for lv in levers(PlanRequest.model_validate(LORA_8B_MBS), three).levers if lv.id == "micro_batch_size")
    assert lv.changes == {"training.micro_batch_size": 2, "training.gradient_accumulation_steps": 6} and lv.fits


def test_combined_lever_when_no_single_one_fits() -> None:
    out = levers(PlanRequest.model_validate(FULL_8B_4090))
    assert [lv.id for lv in out.levers if lv.fits] == ["combined"]
    combined = out.levers[0]
    assert combined.changes["training.gradient_checkpointing"] is True
    assert combined.changes["method"] in ("lora", "qlora")


def test_a_fitting_plan_lists_memory_savers_without_more_gpus() -> None:
    req = PlanRequest.model_validate({"model": "meta-llama/Llama-3.1-8B", "method": "lora"})
    out = levers(req)
    assert out.current_fits
    ids = {lv.id for lv in out.levers}
    assert "method_qlora" in ids and not ids & {"zero3", "fsdp", "gpu", "seq_len", "combined"}
    assert all(lv.saves_bytes > 0 for lv in out.levers)


def test_levers_api_post_and_get_agree() -> None:
    r = client.post("/api/v1/levers", json={"request": QWEN32_5090})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["current_total_bytes"] == estimate(PlanRequest.model_validate(QWEN32_5090)).memory.total
    g = client.get("/api/v1/levers", params={"model": "Qwen/Qwen3-32B", "method": "qlora", "seq_len": "3584",
                                             "gpu": "nvidia-rtx-5090", "target_modules": ""})
    assert g.status_code == 200, g.text
    assert g.json()["current_total_bytes"] == data["current_total_bytes"]
    # a budget in the body and bad input named by field
    r = client.post("/api/v1/levers", json={"request": QWEN32_5090, "budget": "40GiB"})
    assert r.json()["budget_bytes"] == 40 * 2**30 and r.json()["current_fits"] is True
    bad = client.get("/api/v1/levers", params={"model": "meta-llama/Llama-3.1-8B", "budget": "lots"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "budget"]
    bad = client.post("/api/v1/levers", json={"request": {**QWEN32_5090, "hardware": {"gpu": "nope"}}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "request", "hardware", "gpu"]


PAGE_QWEN = {"model": "Qwen/Qwen3-32B", "method": "qlora", "seq_len": "4096", "gpu": "nvidia-rtx-5090",
             "r": "16", "lora_alpha": "32"}


def test_page_links_apply_each_lever() -> None:
    """Every lever on the page is a link whose query is the plan with that lever applied (the no-JS path)."""
    r = client.get("/", params=PAGE_QWEN)
    assert r.status_code == 200
    section = r.text[r.text.index('id="make-it-fit"'):]
    assert "Does not fit on RTX 5090" in section
    hrefs = [unescape(h) for h in re.findall(r'<a href="(/\?[^"]+)#make-it-fit" data-apply>', section)]
    req, _ = parse_form(PAGE_QWEN)
    assert req is not None
    want = levers(req).levers
    assert len(hrefs) == len(want)
    for href, lv in zip(hrefs, want, strict=True):
        linked, errors = parse_form(dict(parse_qsl(urlsplit(href).query, keep_blank_values=True)))
        assert not errors and linked == lv.request, lv.id
        assert format_bytes(lv.total_bytes) in section
    # following the first (fitting) link gives a page that fits
    page = client.get(hrefs[0])
    assert page.status_code == 200 and "Fits on RTX 5090" in page.text


def test_page_link_of_the_micro_batch_lever_sets_the_accumulation() -> None:
    """The micro-batch lever's link carries gradient_accumulation_steps too: following it gives its plan."""
    form = {"model": "meta-llama/Llama-3.1-8B", "method": "lora", "r": "256", "lora_alpha": "512", "seq_len": "1024",
            "micro_batch_size": "12", "gradient_accumulation_steps": "2", "gpu": "nvidia-rtx-4090",
            "target_modules": "q_proj,v_proj"}
    req, _ = parse_form(form)
    assert req is not None
    lv = next(lv for lv in levers(req).levers if lv.id == "micro_batch_size")
    steps = lv.changes["training.gradient_accumulation_steps"]
    assert steps == 2 * 12 // lv.changes["training.micro_batch_size"]
    section = client.get("/", params=form).text
    hrefs = [unescape(h) for h in re.findall(r'<a href="(/\?[^"]+)#make-it-fit" data-apply>', section)]
    queries = [dict(parse_qsl(urlsplit(h).query, keep_blank_values=True)) for h in hrefs]
    [query] = [q for q in queries if q["gradient_accumulation_steps"] == str(steps)]
    assert parse_form(query)[0] == lv.request


def test_notes_explain_qlora_above_lora_and_optimizer_peaks() -> None:
    body = {"model": "Qwen/Qwen3-30B-A3B", "lora": {"target_modules": "all-linear"}}
    results = {m: estimate(PlanRequest.model_validate({**body, "method": m})) for m in ("full", "lora", "qlora")}
    assert results["qlora"].memory.total > results["lora"].memory.total  # the surprise itself
    notes = surprises(PlanRequest.model_validate(body), results)
    q = next(n for n in notes if n.topic == "quantized_above")
    no_upcast = estimate(PlanRequest.model_validate({**body, "method": "qlora",
                                                     "quantization": {"prepare_kbit": False}})).memory.total
    assert "fused MoE experts" in q.text and f"(prepare_kbit off): {format_bytes(no_upcast)}" in q.text
    unquantized = results["qlora"].parameters.total - results["qlora"].quantization.quantized_params
    assert f"{unquantized:,} parameters" in q.text
    phases = [n for n in notes if n.topic == "peak_phase"]
    for n in phases:
        for m in n.methods:
            assert results[m].peak.phase != "backward"
    assert any("full" in n.methods and "optimizer step" in n.text for n in phases) == (
        results["full"].peak.phase == "optimizer")


def test_paged_optimizer_state_is_its_own_figure_and_in_the_verdict() -> None:
    """Full fine-tuning with paged_adamw_8bit on an A100 40GB: the paged state is reported beside the total and
    the page says it cannot stay on the card. Paged bytes by hand: 8-bit states (1 byte × 2 moments) of every
    tensor with ≥1e5 elements (bitsandbytes' paged threshold), except the nn.Embedding weight (128,256 × 4,096),
    whose states HF Trainer keeps in 32 bits (4 bytes × 2): 6 more bytes per element."""
    form = {"model": "meta-llama/Llama-3.1-8B", "method": "full", "optim": "paged_adamw_8bit",
            "gpu": "nvidia-a100-40gb"}
    req, _ = parse_form(form)
    assert req is not None
    res = estimate(req)
    from app.core.generic import model_inventory
    big = sum(t.numel for t in model_inventory("meta-llama/Llama-3.1-8B")[1].unique_tensors() if t.numel >= 100_000)
    assert res.memory.paged_optimizer_states == 2 * big + 6 * 128_256 * 4_096
    spare = gpu("nvidia-a100-40gb").vram_bytes - res.memory.total
    assert 0 < spare < res.memory.paged_optimizer_states
    page = client.get("/", params=form).text
    assert f"Plus {format_bytes(res.memory.paged_optimizer_states)} of paged optimizer state" in page
    assert "pages out to host RAM" in page and "paged state pages to host RAM" in page
    verdict = {f.gpu: f.paged_on_gpu for f in res.fits}
    assert verdict["nvidia-a100-40gb"] is False  # 5.25 GiB spare < 17.89 GiB paged
    assert verdict["nvidia-h200-141gb"] is True  # 104 GiB spare
    unpaged = estimate(PlanRequest(model="meta-llama/Llama-3.1-8B"))  # adamw_torch: nothing paged
    assert unpaged.memory.paged_optimizer_states == 0 and all(f.paged_on_gpu is None for f in unpaged.fits)


def test_note_on_qlora_activations_above_lora() -> None:
    """Llama-3.1-8B: QLoRA keeps more activations than LoRA only because of the fp32 upcast."""
    body = {"model": "meta-llama/Llama-3.1-8B", "lora": {"target_modules": "all-linear"}}
    for prepare_kbit in (True, False):
        b = {**body, "quantization": {"prepare_kbit": prepare_kbit}}
        res = {m: estimate(PlanRequest.model_validate({**b, "method": m})) for m in ("lora", "qlora")}
        topics = [n.topic for n in surprises(PlanRequest.model_validate(b), res)]
        above = res["qlora"].memory.activations > res["lora"].memory.activations
        assert above is prepare_kbit
        assert ("quantized_activations" in topics) is above
