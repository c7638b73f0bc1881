"""Hub ids end to end against a stand-in Hub on 127.0.0.1 (tests/hub_standin.py): POST /api/v1/estimate and
/fit, the page, and the CLI, each in a subprocess whose HF_ENDPOINT points at the stand-in and whose HF_HOME
is a temporary directory. References: transformers' own model built on the meta device, and the same plan
with the config pasted."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core import PlanRequest, estimate
from app.core.model_types import transformers_model_types

from .conftest import TINY_CONFIGS
from .hub_standin import GOOD_TOKEN, StandInHub, config_repo, running_hub
from .reference.hf import meta_model
from .serving import free_port, running_server

ROOT = Path(__file__).resolve().parent.parent
MAX_BYTES = 16_384  # PEFT_PLANNER_HUB_MAX_CONFIG_BYTES of the servers and CLIs started here

LLAMA = {**TINY_CONFIGS["llama"], "architectures": ["LlamaForCausalLM"]}
QWEN3 = {**TINY_CONFIGS["qwen3"], "architectures": ["Qwen3ForCausalLM"]}
# A Devstral-style FP8 checkpoint (mistral architecture; quantization_config as transformers'
# FineGrainedFP8Config.to_dict() writes it) and an MXFP4 one (gpt-oss's quantization_config).
FP8 = {**TINY_CONFIGS["mistral"], "architectures": ["MistralForCausalLM"],
       "quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}}
MXFP4 = {**LLAMA, "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": ["lm_head"]}}
# Qwen/Qwen-7B (the first Qwen): a real config.json that needs trust_remote_code (model_type "qwen" is not in
# transformers; its auto_map names the repo's own modeling_qwen.py), as kept at github.com/zhangningboo/Qwen-7B
# (commit abcb6d6d8ec6), abridged to the keys that matter here.
REMOTE = {"architectures": ["QWenLMHeadModel"], "model_type": "qwen", "hidden_size": 4096, "num_hidden_layers": 32,
          "num_attention_heads": 32, "intermediate_size": 22016, "vocab_size": 151936, "kv_channels": 128,
          "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                       "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"}}
HUGE = {**LLAMA, "padding": "x" * (MAX_BYTES + 1)}

REPOS = {
    "test-org/tiny-llama": config_repo(LLAMA, "llama"),
    "test-org/tiny-qwen3": config_repo(QWEN3, "qwen3"),
    "test-org/gated-llama": config_repo(LLAMA, "gated", access="gated"),
    "test-org/private-llama": config_repo(LLAMA, "private", access="private"),
    "test-org/fp8-mistral": config_repo(FP8, "fp8"),
    "test-org/mxfp4-llama": config_repo(MXFP4, "mxfp4"),
    "test-org/remote-code": config_repo(REMOTE, "remote"),
    "test-org/huge-config": config_repo(HUGE, "huge"),
    "test-org/slow-llama": config_repo(LLAMA, "slow", delay_s=3.0),
}


def hub_env(endpoint: str, hf_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1", "PEFT_PLANNER_HUB_MAX_CONFIG_BYTES": str(MAX_BYTES),
            "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", **extra}


@pytest.fixture(scope="module")
def hub() -> Iterator[StandInHub]:
    with running_hub(REPOS) as h:
        yield h


@pytest.fixture(scope="module")
def server(hub: StandInHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("hub-server")
    with running_server(work, env=hub_env(hub.url, work / "hf-home")) as url:
        yield url


def pasted(cfg: dict[str, Any], **plan: Any) -> dict[str, Any]:
    """The same plan with the config pasted: what a Hub id must answer like."""
    return estimate(PlanRequest.model_validate({"model": {"config": copy.deepcopy(cfg)}, **plan})).model_dump(
        mode="json")


def plan_error(response: httpx.Response, loc: list[str]) -> str:
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == loc, detail
    return detail["msg"]


# --------------------------------------------------------------------------------------------- the API


def test_estimate_fetches_the_config_once_and_answers_as_for_a_pasted_config(server: str, hub: StandInHub) -> None:
    plan = {"method": "qlora", "lora": {"r": 16, "target_modules": "all-linear"}}
    before = len(hub.requests)
    r = httpx.post(f"{server}/api/v1/estimate", json={"model": "test-org/tiny-llama", **plan}, timeout=60)
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["parameters"]["total"] == meta_model(LLAMA).num_parameters()  # transformers' own count
    reference = pasted(LLAMA, **plan)
    for key in ("parameters", "memory", "breakdown", "quantization", "fits"):
        assert res[key] == reference[key], key
    commit = REPOS["test-org/tiny-llama"].commit
    assert res["model"]["id"] == "test-org/tiny-llama"
    assert res["source"] == {
        "kind": "hub", "hub_id": "test-org/tiny-llama", "revision": "main", "commit_sha": commit,
        "origin": f"{hub.url}/test-org/tiny-llama/resolve/{commit}/config.json", "notes": []}
    seen = [m for m, p in hub.requests[before:] if "/resolve/" in p]
    assert seen == ["HEAD", "HEAD", "GET"]  # ours (size check), hf_hub_download's, the download
    # a second request is answered from the in-process cache: no request reaches the Hub
    again = httpx.post(f"{server}/api/v1/estimate", json={"model": "test-org/tiny-llama", **plan}, timeout=60)
    assert again.json()["memory"] == res["memory"] and len(hub.requests) == before + len(seen)


def test_fit_takes_hub_ids(server: str) -> None:
    body = {"model": "test-org/tiny-qwen3", "method": "lora", "training": {"seq_len": 512}}
    r = httpx.post(f"{server}/api/v1/fit", json={"request": body, "budget": "8GiB"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["current_total_bytes"] == pasted(QWEN3, method="lora", training={"seq_len": 512})["memory"]["total"]
    q = httpx.get(f"{server}/api/v1/fit", params={"model": "test-org/tiny-qwen3", "seq_len": "512", "budget": "8GiB"},
                  timeout=60)
    assert q.status_code == 200, q.text


@pytest.mark.parametrize(("model", "needles"), [
    ("test-org/gated-llama", ["gated", "HF_TOKEN is not set", "paste the model's config.json"]),
    ("test-org/private-llama", ["private", "set HF_TOKEN", "paste"]),
    ("test-org/no-such-model", ["no such model on the Hub", "paste"]),
    ("test-org/tiny-llama@v9", ["no revision 'v9'"]),
    ("test-org/remote-code", ["trust_remote_code", "model_type 'qwen' is not in transformers 5.24",
                              "modeling_qwen.QWenLMHeadModel", "runs no code from a repository"]),
    ("test-org/huge-config", [f"over the {MAX_BYTES}-byte limit", "PEFT_PLANNER_HUB_MAX_CONFIG_BYTES"]),
])
def test_hub_refusals_are_a_clear_422_on_model(server: str, hub: StandInHub, model: str,
                                                needles: list[str]) -> None:
    before = len(hub.requests)
    msg = plan_error(httpx.post(f"{server}/api/v1/estimate", json={"model": model}, timeout=60), ["body", "model"])
    assert msg.startswith(f"{model.split('@')[0]!r} is not a catalog model; from the Hub: ")
    for needle in needles:
        assert needle in msg, (needle, msg)
    fit = httpx.post(f"{server}/api/v1/fit", json={"request": {"model": model}}, timeout=60)
    assert plan_error(fit, ["body", "request", "model"]) == msg
    if model == "test-org/huge-config":  # refused on the HEAD's size, before any download
        assert [m for m, p in hub.requests[before:] if "huge-config" in p] == ["HEAD", "HEAD"]


@pytest.mark.parametrize(("model", "kind", "loaded_as"), [
    ("test-org/fp8-mistral", "FP8", "FineGrainedFP8Config(dequantize=True)"),
    ("test-org/mxfp4-llama", "MXFP4", "Mxfp4Config(dequantize=True)"),
])
def test_mxfp4_and_fp8_checkpoints_say_what_the_recipe_loads(server: str, model: str, kind: str,
                                                             loaded_as: str) -> None:
    for method in ("lora", "qlora"):
        r = httpx.post(f"{server}/api/v1/estimate", json={"model": model, "method": method}, timeout=60)
        assert r.status_code == 200, r.text
        res = r.json()
        (note,) = [a for a in res["assumptions"] if kind in a]
        assert loaded_as in note and "bitsandbytes 4-bit" in note and "not a bitsandbytes checkpoint" in note
        assert res["source"]["notes"] == [note]
        cfg = FP8 if kind == "FP8" else MXFP4
        if method == "lora":  # dequantized: 2 bytes (bf16) per parameter, no quantization constants
            total = meta_model(cfg).num_parameters()
            assert (res["memory"]["weights"], res["memory"]["quantization_constants"]) == (2 * total, 0)
        else:  # bitsandbytes NF4 of the dequantized weights, as for any bf16 checkpoint
            assert res["quantization"] == pasted({**cfg, "quantization_config": None}, method=method)["quantization"]


# ---------------------------------------------------------------------------------------------- the page


def test_page_takes_a_typed_hub_id_and_says_where_the_config_came_from(server: str) -> None:
    r = httpx.get(f"{server}/", params={"model": "test-org/tiny-llama", "method": "lora"}, timeout=60)
    assert r.status_code == 200, r.text
    commit = REPOS["test-org/tiny-llama"].commit
    assert f"config.json from Hub: test-org/tiny-llama at commit {commit[:12]}" in r.text
    assert "estimated by the hand-written rules" in r.text
    assert f"{meta_model(LLAMA).num_parameters():,}" in r.text
    assert '<input id="model" name="model" list="model-ids" value="test-org/tiny-llama"' in r.text
    assert '<option value="meta-llama/Llama-3.1-8B"></option>' in r.text  # the catalog as suggestions
    catalog = httpx.get(f"{server}/", params={"model": "meta-llama/Llama-3.2-1B"}, timeout=60)
    assert "config.json from catalog: catalog file app/core/data/models/meta-llama--Llama-3.2-1B.json" in catalog.text
    data = httpx.get(f"{server}/compare.json", params={"model": "test-org/tiny-llama"}, timeout=60).json()
    assert data["globals"]["model"] == "test-org/tiny-llama"
    assert data["methods"]["lora"]["estimate"]["source"]["commit_sha"] == commit


def test_page_shows_the_hub_refusal(server: str) -> None:
    r = httpx.get(f"{server}/", params={"model": "test-org/gated-llama"}, timeout=60)
    assert r.status_code == 422
    assert "model: &#39;test-org/gated-llama&#39; is not a catalog model; from the Hub: a gated repository" in r.text


# ----------------------------------------------------------------------------------------------- the CLI


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_fetches_caches_and_works_offline_from_the_cache(hub: StandInHub, tmp_path: Path) -> None:
    env = hub_env(hub.url, tmp_path / "hf-home")
    out = cli(env, "estimate", "--model", "test-org/tiny-qwen3", "--method", "dora", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["parameters"] == pasted(QWEN3, method="dora")["parameters"]
    assert res["parameters"]["total"] == meta_model(QWEN3).num_parameters()
    commit = REPOS["test-org/tiny-qwen3"].commit
    assert res["source"]["commit_sha"] == commit
    table = cli(env, "estimate", "--model", "test-org/tiny-qwen3")
    assert f"config.json: Hub test-org/tiny-qwen3 at commit {commit}" in table.stdout
    # HF_HUB_OFFLINE: huggingface_hub's cache answers, and says so
    offline = cli({**env, "HF_HUB_OFFLINE": "1"}, "estimate", "--model", "test-org/tiny-qwen3", "--json")
    assert offline.returncode == 0, offline.stderr
    res = json.loads(offline.stdout)
    assert res["source"]["commit_sha"] == commit and "(HF_HUB_OFFLINE is set)" in res["source"]["origin"]
    assert res["source"]["origin"].startswith(f"huggingface_hub cache {tmp_path / 'hf-home'}")
    missing = cli({**env, "HF_HUB_OFFLINE": "1"}, "estimate", "--model", "test-org/tiny-llama")
    assert missing.returncode == 2
    assert "HF_HUB_OFFLINE is set) and huggingface_hub's cache (HF_HOME) has no copy" in missing.stderr
    # the Hub unreachable (nothing listens there): the cache answers; without a copy, exit 2 with the advice
    down = {**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    cached = cli(down, "estimate", "--model", "test-org/tiny-qwen3", "--json")
    assert cached.returncode == 0, cached.stderr
    assert "unreachable: ConnectError" in json.loads(cached.stdout)["source"]["origin"]
    gone = cli(down, "estimate", "--model", "test-org/tiny-llama")
    assert gone.returncode == 2 and "unreachable" in gone.stderr and "paste the model's config.json" in gone.stderr


def test_a_hub_that_hangs_is_cut_off_by_the_timeout(hub: StandInHub, tmp_path: Path) -> None:
    # PEFT_PLANNER_HUB_TIMEOUT_S=1 against a Hub that answers after 3 s: the request fails on the read timeout
    # (one try, no retries) and, with nothing cached, says so instead of waiting
    env = hub_env(hub.url, tmp_path / "hf-home", PEFT_PLANNER_HUB_TIMEOUT_S="1")
    out = cli(env, "estimate", "--model", "test-org/slow-llama")
    assert out.returncode == 2
    assert f"{hub.url} unreachable: ReadTimeout" in out.stderr and "paste the model's config.json" in out.stderr
    assert [m for m, p in hub.requests if "slow-llama" in p] == ["HEAD"]


def test_cli_token_opens_a_gated_repo(hub: StandInHub, tmp_path: Path) -> None:
    env = hub_env(hub.url, tmp_path / "hf-home")
    refused = cli(env, "fit", "--model", "test-org/gated-llama", "--budget", "8GiB")
    assert refused.returncode == 2 and "set HF_TOKEN to a token with access" in refused.stderr
    wrong = cli({**env, "HF_TOKEN": "hf_wrong"}, "estimate", "--model", "test-org/gated-llama")
    assert wrong.returncode == 2 and "HF_TOKEN is set but its account has no access" in wrong.stderr
    ok = cli({**env, "HF_TOKEN": GOOD_TOKEN}, "estimate", "--model", "test-org/gated-llama", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["parameters"]["total"] == meta_model(LLAMA).num_parameters()


# ---------------------------------------------------------------------------------------------- the data


def test_model_type_list_is_transformers_own() -> None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    assert transformers_model_types() == frozenset(CONFIG_MAPPING_NAMES)
