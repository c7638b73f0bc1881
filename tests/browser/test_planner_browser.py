"""The planner page in a real browser: Debian's chromium driven by Playwright (no `playwright install`).

A fixture serves the app with uvicorn on a free 127.0.0.1 port. The tests change inputs and watch the numbers
and bars change in place (the JS path), run the same plan with JavaScript disabled (the GET-form path), use
the copy and download buttons, and take screenshots at desktop (1280×900) and phone (390×844) widths into
test-artifacts/ (gitignored), copying the compare view's two to docs/screenshots/.

Without chromium these tests fail with a message saying how to install it (`make test` does).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from app.core import PlanRequest, estimate, format_bytes
from app.forms import form_to_body

from ..serving import running_server

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = os.environ.get("PEFT_PLANNER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
START = {"model": "meta-llama/Llama-3.1-8B", "gpu": "nvidia-a100-80gb", "r": "16", "lora_alpha": "32",
         "seq_len": "2048"}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(ARTIFACTS / "server") as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"chromium not found at {CHROMIUM}: install Debian's package (`apt-get update && apt-get "
                    "install -y chromium`; `make test` does it) or set PEFT_PLANNER_CHROMIUM", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright Python package is missing: `.venv/bin/pip install -e '.[dev]'` "
                    "(do not run `playwright install`: the tests use Debian's chromium)", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _url(base: str, params: dict[str, str]) -> str:
    from urllib.parse import urlencode
    return f"{base}/?{urlencode(params)}"


def _expected(form: dict[str, str], method: str) -> Any:
    return estimate(PlanRequest.model_validate(form_to_body({**form, "method": method})))


def _cell(page: Any, method: str, key: str) -> str:
    return " ".join(page.locator(f'[data-m="{method}"][data-k="{key}"]').first.inner_text().split())


def _bar_widths(page: Any) -> dict[str, float]:
    """Rendered pixel length of each method's stacked bar (sum of its rects' widths)."""
    return page.evaluate("""() => {
        const out = {};
        document.querySelectorAll('#chart g.row').forEach(g => {
            let w = 0;
            g.querySelectorAll('rect[data-component]').forEach(r => { w += r.getBoundingClientRect().width; });
            out[g.dataset.m] = w;
        });
        return out;
    }""")


def _chart_width(page: Any) -> float:
    return page.evaluate("() => document.getElementById('chart').getBoundingClientRect().width")


def _check_bars(page: Any, form: dict[str, str]) -> None:
    page.wait_for_function("() => document.getAnimations().length === 0")  # the bars' CSS transitions
    data = page.evaluate("async (q) => (await fetch('/compare.json?' + q)).json()",
                         urlsplit(page.url).query)
    scale = data["scale_bytes"]
    widths = _bar_widths(page)
    chart = _chart_width(page)
    for m in ("full", "lora", "qlora", "dora", "qdora"):
        if not data["methods"][m]["ok"]:
            assert widths[m] == 0, m  # a refused method has no bar
            continue
        # the bar is the peak moment: its segments add up to memory.total (gradients as alive at the peak)
        parts = _expected(form, m).memory.total
        assert widths[m] == pytest.approx(chart * parts / scale, abs=2.0), m
        assert widths[m] <= chart + 0.5
    assert widths["full"] > 2 * widths["qlora"]


def test_js_updates_numbers_and_bars_in_place(browser: Any, server: str) -> None:
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(_url(server, START))
    page.evaluate("() => { window.__sameDocument = true; }")
    form = dict(START)
    assert _cell(page, "lora", "trainable") == f"{_expected(form, 'lora').parameters.trainable:,}"
    _check_bars(page, form)
    before = _bar_widths(page)

    # r: trainable parameters of every adapter method change, full fine-tuning's do not
    page.fill("#r", "64")
    form["r"] = "64"
    want = f"{_expected(form, 'lora').parameters.trainable:,}"
    page.wait_for_function("(t) => document.querySelector('[data-m=lora][data-k=trainable]').textContent === t",
                           arg=want)
    assert _cell(page, "dora", "trainable") == f"{_expected(form, 'dora').parameters.trainable:,}"
    assert _cell(page, "full", "trainable") == f"{_expected(form, 'full').parameters.trainable:,}"
    assert "r=64" in page.url

    # seq_len: activations and totals grow; the bars follow on the common scale
    page.fill("#seq_len", "8192")
    form["seq_len"] = "8192"
    want = format_bytes(_expected(form, "qlora").memory.total)
    page.wait_for_function("(t) => document.querySelector('[data-m=qlora][data-k=total]').textContent === t",
                           arg=want)
    for m in ("full", "lora", "qlora", "dora", "qdora"):
        res = _expected(form, m)
        assert _cell(page, m, "activations") == format_bytes(res.memory.activations)
        assert _cell(page, m, "total") == format_bytes(res.memory.total)
    _check_bars(page, form)
    after = _bar_widths(page)
    assert after != before

    # the URL is the plan: shareable, and no navigation happened
    q = parse_qs(urlsplit(page.url).query)
    assert q["seq_len"] == ["8192"] and q["r"] == ["64"] and q["model"] == ["meta-llama/Llama-3.1-8B"]
    assert page.evaluate("() => window.__sameDocument") is True
    assert "Updated" in page.inner_text("#status")
    # the details below (server-rendered fragment) follow the same plan
    assert page.inner_text('[data-testid="trainable-params"]') == f"{_expected(form, 'lora').parameters.trainable:,}"

    # reloading the replaced URL without JS state shows the same numbers
    shared = browser.new_context(viewport=DESKTOP, java_script_enabled=False).new_page()
    shared.goto(page.url)
    assert _cell(shared, "qlora", "total") == _cell(page, "qlora", "total")
    shared.context.close()
    assert not errors, errors
    ctx.close()


def test_method_tab_switches_details(browser: Any, server: str) -> None:
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    page.goto(_url(server, START))
    page.click('nav.tabs a[data-tab="qdora"]')
    page.wait_for_function("() => document.querySelector('nav.tabs a[aria-current=page]').dataset.tab === 'qdora'")
    assert "method=qdora" in page.url
    qdora = _expected(START, "qdora")
    assert page.inner_text('[data-testid="trainable-params"]') == f"{qdora.parameters.trainable:,}"
    assert "QDoRA" in page.inner_text(".plan-title")
    ctx.close()


def _ticks(page: Any) -> list[str]:
    return page.eval_on_selector_all("#chart g.ticks text", "els => els.map(e => e.textContent)")


def test_refused_method_shows_the_reason(browser: Any, server: str) -> None:
    page = browser.new_page(viewport=DESKTOP)
    form = {"model": "Qwen/Qwen3-8B", "gpu": "nvidia-h200-141gb", "r": "8"}
    page.goto(_url(server, form))
    assert not page.locator('[data-m="dora"][data-k="error"]').is_visible()
    ticks_before = _ticks(page)
    # an MoE model, chosen in place: DoRA and QDoRA on its fused experts are refused, with the planner's reason
    page.fill("#model", "Qwen/Qwen3-30B-A3B")  # a typed id (or a datalist pick) updates on "change"
    page.dispatch_event("#model", "change")
    page.wait_for_function("() => document.querySelector('td[data-m=dora]').classList.contains('refused')")
    for m in ("dora", "qdora"):
        reason = page.locator(f'[data-m="{m}"][data-k="error"]')
        assert reason.is_visible() and "DoRA" in reason.inner_text()
        assert "refused" in page.text_content(f'#chart text[data-m="{m}"]')
    assert not page.locator('[data-m="lora"][data-k="error"]').is_visible()
    moe = {**form, "model": "Qwen/Qwen3-30B-A3B"}
    assert _cell(page, "lora", "total") == format_bytes(_expected(moe, "lora").memory.total)
    # the axis follows the new scale (its number of ticks may change)
    data = page.evaluate("async (q) => (await fetch('/compare.json?' + q)).json()", urlsplit(page.url).query)
    assert _ticks(page) == [t["label"] for t in data["ticks"]] != ticks_before
    _check_bars(page, moe)
    # and back to the dense model: the refusal clears
    page.fill("#model", "Qwen/Qwen3-8B")
    page.dispatch_event("#model", "change")
    page.wait_for_function("() => !document.querySelector('td[data-m=dora]').classList.contains('refused')")
    assert _cell(page, "dora", "total") == format_bytes(_expected(form, "dora").memory.total)
    assert not page.locator('[data-m="dora"][data-k="error"]').is_visible()
    assert _ticks(page) == ticks_before
    page.close()


def test_without_javascript_the_form_still_works(browser: Any, server: str) -> None:
    ctx = browser.new_context(viewport=DESKTOP, java_script_enabled=False)
    page = ctx.new_page()
    page.goto(_url(server, START))
    assert page.locator(".export-buttons").is_hidden()  # copy buttons need JS; the text blocks do not
    page.fill("#r", "8")
    page.fill("#seq_len", "1024")
    with page.expect_navigation():
        page.click("form#plan button[type=submit]:not([formmethod])")
    q = parse_qs(urlsplit(page.url).query)
    assert q["r"] == ["8"] and q["seq_len"] == ["1024"]
    form = {**START, "r": "8", "seq_len": "1024"}
    for m in ("full", "lora", "qlora", "dora", "qdora"):
        assert _cell(page, m, "total") == format_bytes(_expected(form, m).memory.total)
    assert page.locator("#chart rect[data-component=weights]").count() == 5
    _check_bars(page, form)
    # an explanation opens in place with the keyboard
    summary = page.locator('details.why.method summary').nth(3)  # DoRA's column
    summary.focus()
    page.keyboard.press("Enter")
    assert page.locator("details.why.method").nth(3).locator(".pop").is_visible()
    assert "[3.1, 3.9]" in page.locator("details.why.method").nth(3).inner_text()
    # the snippets are readable text, and the download is a plain link
    page.click("text=curl: POST /api/v1/estimate")
    assert page.inner_text("#curl-text").startswith("curl -s -X POST")
    assert page.get_attribute("#download-json", "href").startswith("/estimate.json?")
    ctx.close()


def test_copy_and_download(browser: Any, server: str) -> None:
    ctx = browser.new_context(viewport=DESKTOP, permissions=["clipboard-read", "clipboard-write"],
                              accept_downloads=True)
    page = ctx.new_page()
    page.goto(_url(server, {**START, "method": "qlora"}))
    page.click("button[data-copy=curl-text]")
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Copied')")
    curl = page.evaluate("() => navigator.clipboard.readText()")
    assert curl.startswith("curl -s -X POST") and "/api/v1/estimate" in curl
    page.click("button[data-copy=python-text]")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('Python')")
    python = page.evaluate("() => navigator.clipboard.readText()")
    assert "BitsAndBytesConfig(" in python and "LoraConfig(" in python and "TrainingArguments(" in python
    compile(python, "snippet.py", "exec")
    with page.expect_download() as dl:
        page.click("#download-json")
    data = json.loads(Path(dl.value.path()).read_text())
    assert data["memory"]["total"] == _expected(START, "qlora").memory.total
    ctx.close()


@pytest.mark.parametrize(("name", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)])
def test_screenshots(browser: Any, server: str, name: str, viewport: dict[str, int]) -> None:
    ctx = browser.new_context(viewport=viewport, device_scale_factor=1)
    page = ctx.new_page()
    page.goto(_url(server, START))
    ARTIFACTS.mkdir(exist_ok=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"page-{name}.png"))
    page.screenshot(path=str(ARTIFACTS / f"page-{name}-full.png"), full_page=True)
    box = page.locator("#compare").bounding_box()
    assert box is not None
    shot = ARTIFACTS / f"compare-{name}.png"
    pad = 8
    page.screenshot(path=str(shot), full_page=True, clip={
        "x": max(box["x"] - pad, 0), "y": max(box["y"] - pad, 0),
        "width": min(box["width"] + 2 * pad, viewport["width"]), "height": box["height"] + 2 * pad})
    shutil.copyfile(shot, SCREENSHOTS / f"compare-{name}.png")
    assert shot.stat().st_size < 400_000
    # readable on a phone: nothing but the scrollable tables is wider than the screen
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"page is {overflow}px wider than the {name} viewport"
    ctx.close()
