"""Issue 14 in a real browser (Debian's chromium via Playwright, as tests/browser/test_planner_browser.py):
make a non-fitting plan fit through the page's levers, the method input, buy-vs-rent figures, no horizontal
overflow at 390 px on every page, and /docs rendering with every request off 127.0.0.1 aborted.

Screenshots (desktop 1280×900, phone 390×844) of the levers and the phone layout go to docs/screenshots/.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from app.core import PlanRequest, estimate, format_bytes
from app.core.catalog import gpu
from app.forms import form_to_body

from ..serving import running_server
from .test_planner_browser import ARTIFACTS, DESKTOP, PHONE, SCREENSHOTS, browser  # noqa: F401 (fixture)

TOKEN = "browser-test-token"
# The case: Qwen3-32B QLoRA on an RTX 5090 does not fit; no fp32 upcast makes it fit.
# tests/test_levers.py: at 3.5k tokens the fp32 upcast alone decides whether it fits the RTX 5090
SHORT = {"model": "Qwen/Qwen3-32B", "method": "qlora", "seq_len": "3584", "gpu": "nvidia-rtx-5090"}
TINY = {"model_type": "llama", "vocab_size": 320, "hidden_size": 64, "intermediate_size": 176,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(ARTIFACTS / "server-issue14", env={"PEFT_PLANNER_TOKEN": TOKEN}) as url:
        yield url


@pytest.fixture(scope="module")
def calibration_id(server: str) -> str:
    """A finished CPU calibration of a tiny model, for /calibrations and /calibrations/{id}."""
    body = {"model": {"config": TINY}, "method": "lora", "lora": {"r": 4},
            "training": {"micro_batch_size": 1, "seq_len": 16}, "device": "cpu", "measure_steps": 1}
    req = urllib.request.Request(f"{server}/api/v1/calibrations", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        job_id = json.load(r)["id"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # a bound that only catches a hang
        with urllib.request.urlopen(f"{server}/api/v1/calibrations/{job_id}", timeout=30) as r:
            if json.load(r)["status"] not in ("queued", "running"):
                return str(job_id)
        time.sleep(0.5)
    pytest.fail("the CPU calibration did not finish in 240 s")


def _url(base: str, params: dict[str, str]) -> str:
    return f"{base}/?{urlencode(params)}"


def _total(form: dict[str, str]) -> int:
    return estimate(PlanRequest.model_validate(form_to_body(form))).memory.total


def _no_overflow(page: Any, what: str) -> None:
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{what} is {overflow}px wider than the viewport"


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_levers_make_a_short_plan_fit(browser: Any, server: str, viewport: dict[str, int]) -> None:  # noqa: F811
    ctx = browser.new_context(viewport=viewport)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(_url(server, SHORT))
    vram = gpu("nvidia-rtx-5090").vram_bytes
    short = _total(SHORT) - vram
    assert short > 0
    levers = page.locator("#make-it-fit")
    assert "Does not fit on RTX 5090" in levers.locator("h2").inner_text()
    assert f"{format_bytes(short)} short" in levers.locator(".verdict").inner_text()
    first = levers.locator("li.fits a[data-apply]").first
    assert "fp32 upcast" in first.inner_text()
    name = "desktop" if viewport is DESKTOP else "phone"
    if viewport is DESKTOP:
        levers.screenshot(path=str(SCREENSHOTS / f"make-it-fit-{name}.png"))
    else:  # what the phone shows: the sticky input bar above the levers
        bar = page.locator("form#plan").bounding_box()
        assert bar is not None
        page.evaluate("(h) => { const el = document.getElementById('make-it-fit');"
                      " window.scrollTo(0, el.getBoundingClientRect().top + window.scrollY - h - 8); }", bar["height"])
        page.screenshot(path=str(SCREENSHOTS / f"make-it-fit-{name}.png"))
    first.click()  # applied in place by planner.js
    page.wait_for_function("() => document.querySelector('#make-it-fit h2').textContent.startsWith('Fits on')")
    fixed = {**SHORT, "prepare_kbit": "off"}
    assert parse_qs(urlsplit(page.url).query)["prepare_kbit"] == ["off"]
    assert page.locator("#prepare_kbit").input_value() == "off"
    total = page.locator('[data-m="qlora"][data-k="total"]').inner_text()
    assert total == format_bytes(_total(fixed)) and _total(fixed) <= vram
    assert page.locator('[data-m="qlora"][data-k="fits_selected"]').inner_text() == "fits"
    _no_overflow(page, f"the planner ({name})")
    assert not errors, errors
    ctx.close()


def test_levers_without_javascript(browser: Any, server: str) -> None:  # noqa: F811
    ctx = browser.new_context(viewport=PHONE, java_script_enabled=False)
    page = ctx.new_page()
    page.goto(_url(server, SHORT))
    link = page.locator("#make-it-fit li.fits a[data-apply]").first
    with page.expect_navigation():
        link.click()
    assert page.locator("#make-it-fit h2").inner_text().startswith("Fits on")
    q = parse_qs(urlsplit(page.url).query)
    assert q["prepare_kbit"] == ["off"] and q["model"] == ["Qwen/Qwen3-32B"]
    ctx.close()


def test_method_input_drives_details_and_exports(browser: Any, server: str) -> None:  # noqa: F811
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    start = {"model": "meta-llama/Llama-3.1-8B", "gpu": "nvidia-rtx-4090", "r": "16", "lora_alpha": "32"}
    page.goto(_url(server, start))
    assert page.locator("#method-lora").is_checked()
    page.click('label[for="method-qdora"]')
    page.wait_for_function("() => document.querySelector('.plan-title').textContent.includes('QDoRA')")
    assert parse_qs(urlsplit(page.url).query)["method"] == ["qdora"]
    assert page.locator("thead th.sel").first.locator(".sel-mark").is_visible()
    assert "QDoRA" in page.locator(".compare-table thead th.sel").inner_text()
    body = json.loads(page.text_content("#curl-text").split("-d '", 1)[1].rsplit("'", 1)[0])
    assert body["method"] == "qdora"
    python = page.text_content("#python-text")
    assert "use_dora=True" in python and "BitsAndBytesConfig(" in python
    href = page.get_attribute("#download-json", "href")
    assert href is not None and parse_qs(urlsplit(href).query)["method"] == ["qdora"]
    with page.expect_download() as dl:
        page.click("#download-json")
    data = json.loads(Path(dl.value.path()).read_text())
    assert data["memory"]["total"] == _total({**start, "method": "qdora"})
    # the column link selects the method too, and the radio follows
    page.click('.compare-table a[data-tab="full"]')
    page.wait_for_function("() => document.getElementById('method-full').checked")
    page.wait_for_function("() => document.querySelector('.plan-title').textContent.includes('Full fine-tuning')")
    ctx.close()


def test_buy_vs_rent_figures(browser: Any, server: str) -> None:  # noqa: F811
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    start = {"model": "meta-llama/Llama-3.1-8B", "method": "qlora", "gpu": "nvidia-rtx-4090"}
    page.goto(_url(server, start))
    page.click("text=Time & cost assumptions")
    page.fill("#usd_per_kwh", "0.3")
    page.fill("#buy_price", "1800")
    page.wait_for_function("() => { const r = document.querySelector('tr[data-gpu=\"nvidia-rtx-4090\"]');"
                           " return !!r && r.textContent.includes('yours'); }")
    row = page.locator('tr[data-gpu="nvidia-rtx-4090"]').inner_text()
    data = page.evaluate("async (q) => (await fetch('/compare.json?' + q)).json()", urlsplit(page.url).query)
    costs = data["methods"]["qlora"]["throughput"]["gpus"]
    own = next(g for g in costs if g["gpu"] == "nvidia-rtx-4090")
    rent = min((g for g in costs if g["cost_usd"] is not None), key=lambda g: g["cost_usd"])
    power = own["hours"] * 450 / 1000 * 0.3  # RTX 4090: 450 W board power
    runs = 1800 / (rent["cost_usd"] - power)  # purchase ÷ (rent per run − power per run)
    assert "$1,800 (yours)" in row and f"{runs:,.0f} runs" in row and "450 W" in row
    assert f"${power:,.2f}" in row
    assert own["mfu"] == 0.30 and own["mfu_source"] == "class"  # a consumer card's class MFU
    page.locator("#costs h3#buy-title").scroll_into_view_if_needed()
    page.locator(".buy-table").screenshot(path=str(SCREENSHOTS / "buy-vs-rent-desktop.png"))
    ctx.close()


def test_phone_inputs_and_results_together(browser: Any, server: str) -> None:  # noqa: F811
    ctx = browser.new_context(viewport=PHONE)
    page = ctx.new_page()
    page.goto(_url(server, {**SHORT, "method": "qdora"}))
    # the method bar and the inputs' summary are on screen, the first result right below them
    assert page.locator('label[for="method-qlora"]').is_visible()
    summary = page.locator("#inputs-summary")
    assert summary.is_visible() and "Qwen/Qwen3-32B" in summary.inner_text()
    compare_top = page.locator("#compare").bounding_box()
    assert compare_top is not None and compare_top["y"] < PHONE["height"] / 2
    # the selected (QDoRA, the last) column of the wide table was scrolled into view
    th = page.locator(".compare-table thead th.sel").bounding_box()
    assert th is not None and th["x"] >= 0 and th["x"] + th["width"] <= PHONE["width"] + 1
    # open the inputs, change one: the panel stays open above the updating results
    summary.click()
    page.fill("#seq_len", "1024")
    page.wait_for_function("(t) => document.querySelector('[data-m=qdora][data-k=total]').textContent === t",
                           arg=format_bytes(_total({**SHORT, "method": "qdora", "seq_len": "1024"})))
    assert page.locator("#seq_len").is_visible()
    assert "1024" in summary.inner_text()
    _no_overflow(page, "the planner with the inputs open")
    page.screenshot(path=str(SCREENSHOTS / "phone-inputs-open.png"))
    ctx.close()


@pytest.mark.parametrize("path", ["/", "/calibrate", "/calibrations", "/calibrations/{id}", "/accuracy", "/docs",
                                  "/redoc"])
def test_every_page_fits_390px(browser: Any, server: str, calibration_id: str, path: str) -> None:  # noqa: F811
    ctx = browser.new_context(viewport=PHONE)
    page = ctx.new_page()
    page.goto(server + path.replace("{id}", calibration_id) + ("?" + urlencode(SHORT) if path == "/" else ""))
    if path == "/docs":
        page.wait_for_selector(".opblock")
    if path == "/redoc":
        page.wait_for_selector("[data-section-id]", timeout=30_000)
    page.wait_for_load_state("networkidle")
    _no_overflow(page, path)
    ctx.close()


def test_docs_render_with_the_network_blocked(browser: Any, server: str) -> None:  # noqa: F811
    ctx = browser.new_context(viewport=DESKTOP)
    blocked: list[str] = []

    def route(r: Any) -> None:
        host = urlsplit(r.request.url).hostname
        if host == "127.0.0.1":
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    ctx.route("**/*", route)
    page = ctx.new_page()
    page.goto(server + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    assert page.locator(".opblock").count() >= 8
    assert page.locator("button.authorize").is_visible()  # the bearer scheme
    page.locator("button.authorize").click()
    assert page.locator(".modal-ux").inner_text().count("bearer") >= 1
    page.screenshot(path=str(ARTIFACTS / "docs-offline.png"))
    assert not blocked, blocked  # it needed nothing from outside
    ctx.close()
