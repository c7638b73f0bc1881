"""The planner page, server side: the compare view's numbers are estimate()'s, refusals show their reason,
the URL carries the plan, and the page's JSON, download and snippets agree with the API."""

from __future__ import annotations

import json
import re
import shlex
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from fastapi.testclient import TestClient

from app.core import PlanError, PlanRequest, estimate, format_bytes
from app.core.throughput import throughput
from app.forms import form_to_body, parse_cost_options, parse_tokens
from app.main import create_app

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("full", "lora", "qlora", "dora", "qdora")
PLAN = {"model": "meta-llama/Llama-3.1-8B", "r": "32", "lora_alpha": "64", "seq_len": "4096",
        "micro_batch_size": "2", "gradient_checkpointing": "on", "optim": "adamw_torch", "precision": "bf16",
        "gpu": "nvidia-l40s", "method": "qlora"}


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


class Page(HTMLParser):
    """Collects the compare view's cells (data-m, data-k → text), td classes, form fields and links."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: dict[tuple[str, str], str] = {}
        self.td_class: dict[str, list[str]] = {}
        self.fields: dict[str, str] = {}
        self.labels: set[str] = set()
        self.ids: list[str] = []
        self.links: list[str] = []
        self.scripts: list[str] = []
        self.rects: dict[str, list[dict[str, str]]] = {}
        self._stack: list[tuple[str, tuple[str, str] | None]] = []
        self._select: str | None = None
        self._textarea: str | None = None
        self._row: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.append(a["id"])
        key = (a["data-m"], a["data-k"]) if "data-m" in a and "data-k" in a else None
        if tag == "td" and "data-m" in a:
            self.td_class.setdefault(a["data-m"], []).append(a.get("class", ""))
        if tag == "g" and "row" in a.get("class", "").split():
            self._row = a.get("data-m")
        if tag == "rect" and self._row:
            self.rects.setdefault(self._row, []).append(a)
        if tag == "input" and a.get("name") and a.get("type") != "file" and (
                a.get("type") not in ("radio", "checkbox") or "checked" in a):  # as a browser submits them
            self.fields[a["name"]] = a.get("value", "")
        if tag == "select":
            self._select = a.get("name")
        if tag == "option" and self._select and "selected" in a:
            self.fields[self._select] = a.get("value", "")
        if tag == "textarea":
            self._textarea = a.get("name")
        if tag == "label" and "for" in a:
            self.labels.add(a["for"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag == "link" and "href" in a:
            self.links.append(a["href"])
        if tag == "script":
            self.scripts.append(a.get("src", ""))
        if tag not in ("input", "rect", "line", "col", "br", "link", "meta"):
            self._stack.append((tag, key))
            if key:
                self.cells[key] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        if tag == "textarea":
            self._textarea = None
        if tag == "g":
            self._row = None
        while self._stack:
            t, _ = self._stack.pop()
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, key in self._stack:
            if key:
                self.cells[key] += data
        if self._textarea:
            self.fields[self._textarea] = self.fields.get(self._textarea, "") + data

    def cell(self, method: str, key: str) -> str:
        return " ".join(self.cells[(method, key)].split())


def results_for(form: dict[str, str]) -> dict[str, object]:
    """estimate() of each method for the page's form (the PlanError message where refused)."""
    req = PlanRequest.model_validate(form_to_body(form))
    out: dict[str, object] = {}
    for m in METHODS:
        try:
            out[m] = estimate(req.model_copy(update={"method": m}))
        except PlanError as exc:
            out[m] = exc
    return out


def test_compare_view_shows_every_method_with_the_estimate_numbers(client: TestClient) -> None:
    r = client.get("/", params=PLAN)
    assert r.status_code == 200, r.text
    page = Page(r.text)
    expected = results_for(PLAN)
    for m in METHODS:
        res = expected[m]
        assert not isinstance(res, PlanError)
        assert page.cell(m, "trainable") == f"{res.parameters.trainable:,}"
        assert page.cell(m, "percent") == f"{res.parameters.trainable_percent:.4f} %"
        for key in ("weights", "quantization_constants", "adapter_weights", "gradients", "optimizer_states",
                    "activations", "overhead", "peak", "total"):
            assert page.cell(m, key) == format_bytes(getattr(res.memory, key)), (m, key)
        assert page.cell(m, "phase") == res.peak.phase
        fit = next(f for f in res.fits if f.gpu == "nvidia-l40s")
        assert page.cell(m, "fits_selected") == ("fits" if fit.fits else "no")
        assert page.cell(m, "fits_note") == (f"{format_bytes(fit.headroom_bytes)} spare" if fit.fits
                                             else f"short {format_bytes(-fit.headroom_bytes)}")
        assert page.cell(m, "fits_count") == f"{sum(f.fits for f in res.fits)} of {len(res.fits)}"
        assert page.cell(m, "error") == ""
    # full FT trains everything; the adapters train the same (LoRA) or a little more (DoRA magnitudes)
    assert page.cell("full", "percent") == "100.0000 %"
    assert expected["dora"].parameters.trainable > expected["lora"].parameters.trainable  # type: ignore[union-attr]
    # the selected method's details are below (the existing single-plan view)
    assert "Memory breakdown (per GPU)" in r.text and "Phases of a training step" in r.text
    assert 'aria-current="page">QLoRA<' in r.text


def test_bars_share_one_scale(client: TestClient) -> None:
    page = Page(client.get("/", params=PLAN).text)
    data = client.get("/compare.json", params=PLAN).json()
    scale = data["scale_bytes"]
    mem = {m: dict(data["methods"][m]["estimate"]["memory"]) for m in METHODS}
    for m in METHODS:  # the bar shows the peak moment: only the gradients alive then
        peak = data["methods"][m]["estimate"]["peak"]
        mem[m]["gradients"] = next(p["gradient_bytes"] for p in peak["phases"] if p["name"] == peak["phase"])
    components = ("weights", "quantization_constants", "adapter_weights", "gradients", "optimizer_states",
                  "activations", "overhead")
    assert scale >= max(m["total"] for m in mem.values())
    for m in METHODS:
        rects = page.rects[m]
        assert [a["data-component"] for a in rects] == list(components)
        for a, key in zip(rects, components, strict=True):
            # each segment is its memory field on the common scale (bar_segments(result, scale))
            assert float(a["width"].rstrip("%")) == pytest.approx(100 * mem[m][key] / scale, abs=1e-3)
        widths = [float(a["width"].rstrip("%")) for a in rects]
        assert sum(widths) <= 100.0 + 1e-6  # no bar runs off the chart
        assert sum(widths) == pytest.approx(100 * mem[m]["total"] / scale, abs=1e-2)  # the segments add up
        xs = [float(a["x"].rstrip("%")) for a in rects]
        assert xs[0] == 0 and all(xs[i + 1] == pytest.approx(xs[i] + widths[i], abs=1e-3) for i in range(6))
    # one scale: bars are in the ratio of their bytes (full fine-tuning far longer than QLoRA)
    length = {m: sum(float(a["width"].rstrip("%")) for a in page.rects[m]) for m in METHODS}
    bytes_ = {m: sum(mem[m][k] for k in components) for m in METHODS}
    assert length["full"] / length["qlora"] == pytest.approx(bytes_["full"] / bytes_["qlora"], rel=1e-3)
    assert length["full"] > 2 * length["qlora"]


def test_refused_method_shows_its_reason(client: TestClient) -> None:
    form = {"model": "mistralai/Mixtral-8x7B-v0.1", "r": "16", "gpu": "nvidia-h200-141gb"}
    r = client.get("/", params=form)
    assert r.status_code == 200, r.text  # the selected method (LoRA) works
    page = Page(r.text)
    for m in ("dora", "qdora"):
        assert "DoRA" in page.cell(m, "error") and "target_parameters" in page.cell(m, "error")
        assert all("refused" in c.split() for c in page.td_class[m])
        assert page.cell(m, "bar_label").endswith("refused by the planner (see the table)")
        assert "refused" not in page.td_class["lora"][0].split()
    lora = estimate(PlanRequest.model_validate(form_to_body({**form, "method": "lora"})))
    assert page.cell("lora", "total") == format_bytes(lora.memory.total)
    # selecting the refused method: 422, and the reason is the page's error
    r = client.get("/", params={**form, "method": "dora"})
    assert r.status_code == 422 and "Cannot estimate this plan" in r.text and "ParamWrapper" in r.text
    assert 'id="compare"' in r.text  # the other methods are still compared


def test_url_round_trip(client: TestClient) -> None:
    r = client.get("/", params=PLAN)
    page = Page(r.text)
    for key, value in PLAN.items():
        assert page.fields[key] == value, key
    # the page's own form, submitted as it is (what a browser without JS sends), reproduces the page
    again = Page(client.get("/", params={k: v for k, v in page.fields.items()}).text)
    assert again.cells == page.cells
    # every method tab is a URL that carries the whole plan
    for m in METHODS:
        link = next(h for h in page.links if h.startswith("/?") and f"method={m}" in h)
        q = dict(parse_qsl(urlsplit(link).query, keep_blank_values=True))
        assert {k: q[k] for k in PLAN if k != "method"} == {k: v for k, v in PLAN.items() if k != "method"}
    off = Page(client.get("/", params={**PLAN, "gradient_checkpointing": "off"}).text)
    assert off.fields["gradient_checkpointing"] == "off"
    assert off.cell("lora", "activations") != page.cell("lora", "activations")


def test_gradient_accumulation_steps_field(client: TestClient) -> None:
    """The form's gradient_accumulation_steps is training.gradient_accumulation_steps: the page shows estimate()'s
    numbers for it (more than without accumulation), keeps it in the form and the TrainingArguments snippet, and an
    out-of-range or non-integer value re-renders the page naming the field (422), never a 500."""
    import html as html_lib

    page = Page(client.get("/", params=PLAN).text)
    assert page.fields["gradient_accumulation_steps"] == "1"  # TrainingSpec's default, shown
    form = {**PLAN, "gradient_accumulation_steps": "8"}
    r = client.get("/", params=form)
    assert r.status_code == 200
    acc = Page(r.text)
    assert acc.fields["gradient_accumulation_steps"] == "8"
    expected = estimate(PlanRequest.model_validate({**form_to_body(form), "method": "qlora"}))
    assert expected.memory.total > results_for(PLAN)["qlora"].memory.total  # type: ignore[union-attr]
    assert acc.cell("qlora", "total") == format_bytes(expected.memory.total)
    python = html_lib.unescape(re.search(r'<pre id="python-text"[^>]*>(.*?)</pre>', r.text, re.S).group(1))
    assert "gradient_accumulation_steps=8," in python
    for bad in ("0", "65537", "two", "2.5"):
        r = client.get("/", params={**PLAN, "gradient_accumulation_steps": bad})
        assert r.status_code == 422 and "training.gradient_accumulation_steps" in r.text, bad
        assert Page(r.text).fields["gradient_accumulation_steps"] == bad  # the form keeps what was typed


def test_alloc_conf_input_and_expandable_saving(client: TestClient) -> None:
    """The form carries PYTORCH_CUDA_ALLOC_CONF; the details say what expandable_segments:True would save."""
    req = PlanRequest(model=PLAN["model"], method="qlora", lora={"r": 32, "lora_alpha": 64,
                                                                  "target_modules": "all-linear"},
                      training={"seq_len": 4096, "micro_batch_size": 2}, hardware={"gpu": "nvidia-l40s"})
    result = estimate(req)
    page = client.get("/", params=PLAN).text
    assert 'name="pytorch_cuda_alloc_conf"' in page
    assert format_bytes(result.memory.reserved) in page
    saves = result.allocator.expandable_segments_saves_bytes
    assert saves > 0 and f"would reserve about {format_bytes(saves)} less" in page
    expandable = client.get("/", params={**PLAN, "pytorch_cuda_alloc_conf": "expandable_segments:True"}).text
    assert Page(expandable).fields["pytorch_cuda_alloc_conf"] == "expandable_segments:True"
    assert "expandable_segments/checkpointed" in expandable
    bad = client.get("/", params={**PLAN, "pytorch_cuda_alloc_conf": "nope:1"})
    assert bad.status_code in (200, 422) and "hardware.pytorch_cuda_alloc_conf" in bad.text


def test_compare_json_matches_the_page(client: TestClient) -> None:
    page = Page(client.get("/", params=PLAN).text)
    data = client.get("/compare.json", params=PLAN).json()
    assert data["selected"] == "qlora" and data["errors"] == []
    for m in METHODS:
        d = data["methods"][m]
        assert d["ok"] and d["error"] is None
        for key, text in d["cells"].items():
            assert page.cell(m, key) == text, (m, key)
        assert d["estimate"]["memory"]["total"] == results_for(PLAN)[m].memory.total  # type: ignore[union-attr]
        assert d["throughput"]["method"] == m
    assert set(data["fragments"]) == {"notes", "levers", "costs", "details", "snippets"}
    assert "Memory breakdown" in data["fragments"]["details"]
    assert data["download"].startswith("/estimate.json?")
    assert data["globals"]["r"] == "32" and data["globals"]["seq_len"] == "4096"
    bad = client.get("/compare.json", params={**PLAN, "r": "0"})
    assert bad.status_code == 422 and any(e.startswith("lora.r") for e in bad.json()["errors"])


def test_time_and_cost_on_the_page(client: TestClient) -> None:
    page = Page(client.get("/", params={**PLAN, "tokens": "250M", "mfu": "0.5", "price": "2"}).text)
    req = PlanRequest.model_validate(form_to_body({**PLAN, "method": "lora"}))
    res = estimate(req)
    rep = throughput(req, [f.gpu for f in res.fits if f.fits], tokens=250_000_000, mfu=0.5,
                     prices={"nvidia-l40s": 2.0})
    l40s = next(g for g in rep.gpus if g.gpu == "nvidia-l40s")
    assert page.cell("lora", "cost_selected") == (f"${l40s.cost_usd:,.2f}" if l40s.cost_usd < 10
                                                  else f"${l40s.cost_usd:,.0f}")
    assert l40s.cost_usd == pytest.approx(l40s.hours * 2.0)
    r = client.get("/", params={**PLAN, "price": "2", "price_nvidia-h100-sxm-80gb": "0.4"})
    assert "$2 (yours)" in r.text and "$0.4 (yours)" in r.text and "Which GPUs each method fits on" in r.text
    costs = client.get("/compare.json", params={**PLAN, "price_nvidia-h100-sxm-80gb": "0.4"}).json()
    row = next(g for g in costs["methods"]["qlora"]["throughput"]["gpus"] if g["gpu"] == "nvidia-h100-sxm-80gb")
    assert row["price_source"] == "override" and row["cost_usd"] == pytest.approx(row["hours"] * 0.4)
    bad = client.get("/", params={**PLAN, "tokens": "lots", "mfu": "3"})
    assert bad.status_code == 422 and "tokens:" in bad.text and "mfu:" in bad.text


def test_cost_inputs_parse() -> None:
    assert parse_tokens("100M") == 100_000_000
    assert parse_tokens("1.5B") == 1_500_000_000
    assert parse_tokens("2e8") == 200_000_000
    assert parse_tokens("250,000") == 250_000
    opts, errors = parse_cost_options({"tokens": "", "mfu": "0.3", "qlora_slowdown": "1.5"})
    assert errors == [] and opts.mfu == 0.3 and opts.slowdown == {"qlora": 1.5}
    assert parse_cost_options({"price": "-1"})[1]
    assert parse_cost_options({"price_nvidia-l4": "0.5"})[0].prices == {"nvidia-l4": 0.5}
    assert parse_cost_options({"price_nvidia-l4": "x"})[1] == ["price_nvidia-l4: not a number: 'x'"]


def test_download_json_is_the_api_response(client: TestClient) -> None:
    r = client.get("/estimate.json", params=PLAN)
    assert r.status_code == 200
    assert r.headers["content-disposition"].startswith("attachment; filename=\"peft-plan-meta-llama-Llama-3.1-8B")
    api = client.post("/api/v1/estimate", json=form_to_body(PLAN))
    assert r.json() == api.json()
    assert client.get("/estimate.json", params={**PLAN, "seq_len": "0"}).status_code == 422


def test_snippets(client: TestClient) -> None:
    import html as html_lib

    text = client.get("/", params=PLAN).text
    curl = html_lib.unescape(re.search(r'<pre id="curl-text"[^>]*>(.*?)</pre>', text, re.S).group(1))
    argv = shlex.split(curl.replace("\\\n", " "))
    assert argv[:4] == ["curl", "-s", "-X", "POST"] and argv[4].endswith("/api/v1/estimate")
    body = json.loads(argv[argv.index("-d") + 1])
    api = client.post("/api/v1/estimate", json=body).json()
    assert api["memory"]["total"] == results_for(PLAN)["qlora"].memory.total  # type: ignore[union-attr]
    python = html_lib.unescape(re.search(r'<pre id="python-text"[^>]*>(.*?)</pre>', text, re.S).group(1))
    compile(python, "snippet.py", "exec")
    for needle in ("BitsAndBytesConfig(", "load_in_4bit=True", "bnb_4bit_quant_type='nf4'", "LoraConfig(",
                   "r=32,", "lora_alpha=64,", "use_dora=False", "TrainingArguments(",
                   "per_device_train_batch_size=2", "gradient_checkpointing=True", "optim='adamw_torch'",
                   "prepare_model_for_kbit_training", "'meta-llama/Llama-3.1-8B'"):
        assert needle in python, needle
    dora = client.get("/", params={**PLAN, "method": "dora"}).text
    py_dora = html_lib.unescape(re.search(r'<pre id="python-text"[^>]*>(.*?)</pre>', dora, re.S).group(1))
    assert "use_dora=True" in py_dora and "BitsAndBytesConfig" not in py_dora
    full = client.get("/", params={**PLAN, "method": "full"}).text
    py_full = html_lib.unescape(re.search(r'<pre id="python-text"[^>]*>(.*?)</pre>', full, re.S).group(1))
    compile(py_full, "snippet.py", "exec")
    assert "LoraConfig" not in py_full


def test_explanations_in_place(client: TestClient) -> None:
    text = client.get("/", params=PLAN).text
    for needle in ("ΔW = B·A", "α/r", "65,536", "0.39%",  # LoRA and the article's example
                   "blocks of 64", "8/64 + 32/(64·256)",  # NF4 and double quantization
                   "m·(V + ΔV)/‖V + ΔV‖", "[3, 4]", "[0.62, 0.78]", "[3.1, 3.9]",  # DoRA
                   "max_memory_allocated()", "peak + overhead"):
        assert needle in text, needle
    assert text.count('<details class="why') >= 20


def test_light_accessible_and_local(client: TestClient) -> None:
    text = client.get("/", params=PLAN).text
    page = Page(text)
    # every visible input has a label
    for name in ("model", "r", "lora_alpha", "micro_batch_size", "gradient_accumulation_steps", "seq_len",
                 "gradient_checkpointing", "optim",
                 "precision", "gpu", "num_gpus", "sharding", "tokens", "mfu", "price"):
        assert name in page.labels, name
    assert 'aria-live="polite"' in text and 'role="status"' in text
    assert '<form id="plan" class="plan" method="get" action="/"' in text
    assert page.scripts == ["/static/planner.js"]
    assert not [h for h in page.links if h.startswith(("http://", "https://", "//"))]
    assert "<title>" in text and '/static/favicon.svg' in text
    for asset in ("/static/planner.js", "/static/style.css", "/static/favicon.svg"):
        assert client.get(asset).status_code == 200
    js = (ROOT / "static" / "planner.js").read_text()
    assert "/compare.json" in js and "history.replaceState" in js and "http" not in js.replace("https", "")
    # light: one script and one stylesheet, each under 20 kB uncompressed (16 kB before the levers, the buy-vs-rent
    # table and the phone input bar)
    assert len(js) < 20_000 and len((ROOT / "static" / "style.css").read_text()) < 20_000


def test_plan_refused_for_every_method(client: TestClient) -> None:
    r = client.get("/", params={"model": "openai-community/gpt2", "seq_len": "4096"})
    assert r.status_code == 422
    assert "training.seq_len" in r.text and "1024" in r.text
    assert 'id="compare"' not in r.text
