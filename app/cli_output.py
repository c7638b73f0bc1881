"""``peft-planner``'s tables: the estimate and fit answers (the API's JSON) as text, binary units.

Standard library only at import time (``--help`` stays light); ``app.core.units`` is imported when a figure is
formatted.
"""

from __future__ import annotations

from typing import Any


def gib(n: int | None) -> str:
    """Bytes in binary units (``app.core.units.format_bytes``: GiB = 2^30); '-' for None."""
    from app.core.units import format_bytes

    return "-" if n is None else format_bytes(n)


def _header(req: dict[str, Any], res: dict[str, Any] | None = None) -> list[str]:
    model = req.get("model")
    name = model if isinstance(model, str) else "config.json"
    if res is not None:
        m = res["model"]
        name = f"{m.get('id') or name} ({m['model_type']}, {m['num_hidden_layers']} layers)"
    method = req.get("method", "lora")
    lora, tr, hw = req.get("lora", {}), req.get("training", {}), req.get("hardware", {})
    parts = [name, method]
    if method != "full":
        targets = lora.get("target_modules")
        if targets is None:
            shown = "PEFT's default targets"
        else:
            shown = targets if isinstance(targets, str) else ",".join(map(str, targets))
        alpha = lora.get("lora_alpha")
        alpha = f"{alpha:g}" if isinstance(alpha, (int, float)) else alpha
        parts.append(f"r={lora.get('r')} alpha={alpha} on {shown}")
    parts.append(f"{tr.get('precision')} {tr.get('optim')}")
    line2 = (f"micro_batch_size {tr.get('micro_batch_size')} x seq_len {tr.get('seq_len')}, gradient checkpointing "
             f"{'on' if tr.get('gradient_checkpointing') else 'off'}, {hw.get('num_gpus')} x {hw.get('gpu')} "
             f"(sharding {hw.get('sharding')})")
    return [" | ".join(parts), line2]


def render_estimate(req: dict[str, Any], res: dict[str, Any]) -> str:
    p, m, peak = res["parameters"], res["memory"], res["peak"]
    lines = [*_header(req, res)]
    src = res.get("source")
    if src and src["kind"] == "hub":
        commit = src.get("commit_sha") or "unknown"
        lines.append(f"config.json: Hub {src['hub_id']} at commit {commit} ({src['origin']})")
    lines += [f"note: {note}" for note in (src or {}).get("notes", [])]
    lines += ["", "Parameters"]
    lines.append(f"  {'total (base model)':<26}{p['total']:>17,}")
    lines.append(f"  {'trainable':<26}{p['trainable']:>17,}   {p['trainable_percent']:.4f} % of {p['all_params']:,}")
    lines.append(f"  {'added by the adapter':<26}{p['adapter_params']:>17,}   on {p['targeted_modules']} modules")
    lines += ["", f"Memory per GPU{'bytes':>46}"]
    rows = [("weights", "weights"), ("quantization constants", "quantization_constants"),
            ("adapter weights", "adapter_weights"), ("gradients", "gradients"),
            ("optimizer states", "optimizer_states"), ("activations", "activations"),
            (f"peak ({peak['phase']})", "peak"), ("reserved", "reserved"), ("overhead", "overhead"),
            ("total", "total")]
    for label, key in rows:
        lines.append(f"  {label:<26}{gib(m[key]):>13}{m[key]:>19,}")
    if m.get("host_ram"):
        host = m["host_ram"]
        lines.append(f"  {'host RAM (offloaded)':<26}{gib(host):>13}{host:>19,}   all GPUs, not in total")
    alloc = res.get("allocator")
    if alloc:
        lines.append(f"  allocator reserve: {alloc['rule']}")
        if alloc["expandable_segments_saves_bytes"]:
            lines.append(f"  expandable_segments:True would change the reserve by "
                         f"{gib(-alloc['expandable_segments_saves_bytes'])}")
    provisional = " (provisional: activation model not yet checked against traces)" if peak.get("provisional") else ""
    lines += ["", f"Peak by phase{provisional}"]
    for phase in peak["phases"]:
        mark = "  <- peak" if phase["name"] == peak["phase"] else ""
        lines.append(f"  {phase['name']:<26}{gib(phase['bytes']):>13}{phase['bytes']:>19,}{mark}")
    gpu = req.get("hardware", {}).get("gpu")
    row = next((f for f in res.get("fits", []) if f["gpu"] == gpu), None)
    if row is not None:
        verdict = (f"fits, {gib(row['headroom_bytes'])} to spare" if row["fits"]
                   else f"does not fit, short by {gib(-row['headroom_bytes'])}")
        lines += ["", f"{row['gpu']} ({row['name']}, {gib(row['vram_bytes'])}): {verdict}"]
    return "\n".join(lines)


def _search_line(s: dict[str, Any]) -> str:
    label = f"  {s['field']:<28}"
    if s["limited_by"] == "not_applicable":
        return f"{label}{'-':>9}   {s.get('message') or 'not applicable'}"
    if s["value"] is None:
        return f"{label}{'none':>9}   even {s['low']} needs {gib(s['next_total_bytes'])}"
    here, nxt = s["total_bytes"], s["next_total_bytes"]
    text = f"{label}{s['value']:>9}   total {gib(here)}"
    if s["limited_by"] == "budget":
        a, b = gib(here), gib(nxt)
        if a == b:
            a, b = f"{here:,} B", f"{nxt:,} B"
            text = f"{label}{s['value']:>9}   total {a}"
        text += f"; {s['value'] + 1} needs {b}"
    elif s["limited_by"] == "range":
        text += " (the largest allowed value)"
    elif s["limited_by"] == "model":
        text += f"; {s['value'] + 1} is refused: {s.get('message')}"
    return text


def render_fit(req: dict[str, Any], res: dict[str, Any]) -> str:
    budget = res["budget_bytes"]
    source = {"budget": "--budget", "budget_bytes": "budget_bytes",
              "hardware.gpu": f"VRAM of {req.get('hardware', {}).get('gpu')}"}[res["budget_source"]]
    current = res["current_total_bytes"]
    verdict = (f"fits, {gib(budget - current)} to spare" if res["current_fits"]
               else f"does not fit, short by {gib(current - budget)}")
    lines = [*_header(req), "", f"Budget per GPU: {gib(budget)} ({budget:,} bytes; {source})",
             f"As given: memory.total {gib(current)}: {verdict}", "",
             "Largest value that fits (everything else as given)"]
    for key in ("micro_batch_size", "seq_len", "r"):
        lines.append(_search_line(res["searches"][key]))
    methods = res["methods"]
    lines += ["", f"Methods, most capable first; best that fits: {methods['best'] or 'none'}"]
    for row in methods["methods"]:
        if row["total_bytes"] is None:
            lines.append(f"  {row['method']:<8}{'refused':>13}   {row.get('error')}")
        else:
            fits = "fits" if row["fits"] else "no"
            lines.append(f"  {row['method']:<8}{gib(row['total_bytes']):>13}   {fits:<5}"
                         f"{row['trainable_params']:>15,} trainable")
    width = max([len(g["gpu"]) for g in res["gpu_plan"]] + [3]) + 2
    lines += ["", "GPU plan: one card, else the smallest ZeRO-3 group whose per-GPU total fits",
              f"  {'gpu':<{width}}{'VRAM':>11}{'one card':>13}   plan"]
    for g in res["gpu_plan"]:
        if g["num_gpus"] is None:
            plan = f"does not fit even 64 cards (smallest per-GPU total {gib(g['smallest_total_bytes'])})"
        elif g["num_gpus"] == 1:
            plan = f"1 card, {gib(g['headroom_bytes'])} to spare"
        else:
            plan = f"{g['num_gpus']} x zero3, {gib(g['total_bytes'])} per GPU, {gib(g['headroom_bytes'])} to spare"
        lines.append(f"  {g['gpu']:<{width}}{gib(g['vram_bytes']):>11}{gib(g['single_total_bytes']):>13}   {plan}")
    return "\n".join(lines)
