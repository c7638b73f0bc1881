"""Calibration pages in a real browser (Debian's chromium via Playwright, as tests/browser/test_planner_browser.py):
"calibrate this plan" from the planner to a finished job showing measured vs predicted per phase, the cancel
button, and no horizontal overflow at 390 px on /calibrate, /calibrations and a job page."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import TINY_CONFIGS
from ..serving import running_server
from .test_planner_browser import ARTIFACTS, DESKTOP, PHONE, browser  # noqa: F401  (the shared browser fixture)

TOKEN = "browser-token"
TINY = TINY_CONFIGS["llama"]  # 3 layers, hidden 64: a CPU calibration takes seconds


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(ARTIFACTS / "calibration-server", env={"PEFT_PLANNER_TOKEN": TOKEN}) as url:
        yield url


def _post_job(server: str, body: dict[str, Any]) -> str:
    req = urllib.request.Request(f"{server}/api/v1/calibrations", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["id"]


def _job(server: str, job_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server}/api/v1/calibrations/{job_id}", timeout=30) as r:
        return json.loads(r.read())


def _overflow(page: Any) -> int:
    return page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")


def test_calibrate_this_plan_end_to_end(browser: Any, server: str) -> None:  # noqa: F811
    ctx = browser.new_context(viewport=DESKTOP)
    page = ctx.new_page()
    page.goto(f"{server}/?r=4&seq_len=32&micro_batch_size=1&target_modules=all-linear")
    if not page.locator("#config").is_visible():  # the paste box sits in a closed <details>
        page.locator("summary", has_text="paste / upload a config.json").click()
    page.fill("#config", json.dumps(TINY))
    page.click("#calibrate-plan")
    page.wait_for_url(f"{server}/calibrate/plan")
    assert page.locator("#from-plan").is_visible()
    plan = json.loads(page.input_value("#request_json"))
    assert plan["model"] == {"config": TINY}
    assert plan["lora"]["r"] == 4 and plan["training"]["seq_len"] == 32
    page.fill("#measure_steps", "1")
    page.click("button[type=submit]")  # without the token the browser refuses (required field)
    assert page.url == f"{server}/calibrate/plan"
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server}/calibrations/*")
    job_id = page.url.rsplit("/", 1)[-1]
    # the page follows the job (calibration.js polls, then reloads on the final status)
    page.wait_for_selector("#cmp-phases", timeout=120_000)
    assert page.inner_text("#job-status") == "done"
    assert "cpu (its results teach no GPU" in page.inner_text("#measured-device")
    job = _job(server, job_id)
    for p in job["comparison"]["phases"]:
        row = page.locator(f'#cmp-phases tr[data-phase="{p["name"]}"]')
        cells = [" ".join(c.split()) for c in row.locator("td").all_inner_texts()]
        assert f"({p['predicted_bytes']} B)" in cells[0] and f"({p['measured_bytes']} B)" in cells[1]
        assert cells[2] == f"{p['error_percent']:+.2f}"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "calibration-done-desktop.png"), full_page=True)
    ctx.close()


def test_cancel_button(browser: Any, server: str) -> None:  # noqa: F811
    body = {"model": {"config": TINY}, "method": "lora", "lora": {"r": 4}, "training": {"seq_len": 32},
            "device": "cpu", "measure_steps": 20}
    first = _post_job(server, body)
    second = _post_job(server, body)  # queued behind the first
    ctx = browser.new_context(viewport=PHONE)
    page = ctx.new_page()
    page.goto(f"{server}/calibrations/{second}")
    assert page.inner_text("#job-status") in ("queued", "running")
    assert _overflow(page) <= 0, "the job page is wider than 390 px"
    page.click("form.cal-cancel button")  # no token: the browser asks for it, nothing is sent
    assert _job(server, second)["status"] in ("queued", "running")
    page.fill("#cancel-token", "wrong")
    page.click("form.cal-cancel button")
    page.wait_for_selector(".errors")
    assert "Bearer" in page.inner_text(".errors") and _job(server, second)["status"] in ("queued", "running")
    page.fill("#cancel-token", TOKEN)
    page.click("form.cal-cancel button")
    page.wait_for_url(f"{server}/calibrations/{second}")
    page.wait_for_function("() => document.querySelector('#job-status').textContent === 'cancelled'")
    assert page.locator("form.cal-cancel").count() == 0
    assert _job(server, second)["status"] == "cancelled"
    ctx.close()
    deadline = time.monotonic() + 120
    while _job(server, first)["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.5)


@pytest.mark.parametrize("path", ["/calibrate", "/calibrations", "job", "/calibrate/plan-from-planner"])
def test_no_horizontal_overflow_at_390px(browser: Any, server: str, path: str) -> None:  # noqa: F811
    ctx = browser.new_context(viewport=PHONE)
    page = ctx.new_page()
    if path == "job":
        job_id = _post_job(server, {"model": {"config": TINY}, "lora": {"r": 4}, "training": {"seq_len": 32},
                                    "device": "cpu", "measure_steps": 1})
        deadline = time.monotonic() + 120
        while _job(server, job_id)["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        page.goto(f"{server}/calibrations/{job_id}")
        assert page.locator("#cmp-phases").count() == 1
    elif path == "/calibrate/plan-from-planner":
        page.goto(f"{server}/?model=meta-llama/Llama-3.1-8B&method=qlora")
        page.click("#inputs-summary")  # on a phone the inputs (and their buttons) fold into the compact bar
        page.click("#calibrate-plan")
        page.wait_for_url(f"{server}/calibrate/plan")
    else:
        page.goto(server + path)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"calibration-phone-{Path(path).name or 'job'}.png"), full_page=True)
    assert _overflow(page) <= 0, f"{path} is {_overflow(page)}px wider than 390 px"
    ctx.close()
