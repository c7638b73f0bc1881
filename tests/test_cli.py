"""The `peft-planner` command, run for real in subprocesses: exit codes, output, files, and --url against uvicorn."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest

from app import cli, cli_flags
from app.core import PlanRequest, estimate
from app.core import request as core_request
from app.models.resolve import resolve_request, with_source

from .serving import free_port, running_server

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("peft-planner")  # .venv/bin/peft-planner once `pip install -e .` ran
ENV = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
LLAMA_QLORA = ["--model", "meta-llama/Llama-3.1-8B", "--method", "qlora"]

LAUNCHERS = [pytest.param([sys.executable, "-m", "app.cli"], id="python-m-app.cli")]
if SCRIPT.exists():
    LAUNCHERS.append(pytest.param([str(SCRIPT)], id="peft-planner-script"))


def run(*args: str, launcher: list[str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(launcher or [sys.executable, "-m", "app.cli"]), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120, input=stdin)


# --------------------------------------------------------------------------------------------- check


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_check_fits_and_does_not_fit(launcher: list[str]) -> None:
    total = estimate(PlanRequest(model="meta-llama/Llama-3.1-8B", method="qlora")).memory.total
    assert 8 * 2**30 < total <= 24 * 2**30  # the two budgets bracket the run

    ok = run("check", "--budget", "24GiB", *LLAMA_QLORA, launcher=launcher)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("fits: ") and f"({total:,} bytes)" in ok.stdout
    assert "to spare" in ok.stdout

    short = run("check", "--budget", "8GiB", *LLAMA_QLORA, launcher=launcher)
    assert short.returncode == 1, short.stderr
    assert short.stdout.startswith("does not fit: ")
    assert f"short by {cli.gib(total - 8 * 2**30)} ({total - 8 * 2**30:,} bytes)" in short.stdout


def test_check_defaults_to_the_gpu_vram_and_json() -> None:
    out = run("check", *LLAMA_QLORA, "--gpu", "nvidia-rtx-3060-12gb", "--json")
    assert out.returncode == 1, out.stderr
    verdict = json.loads(out.stdout)
    assert verdict["fits"] is False and verdict["budget_bytes"] == 12629049344
    assert verdict["headroom_bytes"] == verdict["budget_bytes"] - verdict["total_bytes"] < 0


@pytest.mark.parametrize(("args", "field"), [
    (["--r", "0"], "error: lora.r: Input should be greater than or equal to 1"),
    (["--gpu", "nope"], "error: hardware.gpu: unknown gpu 'nope'"),
    (["--model", "nobody/nothing"], "error: model: 'nobody/nothing' is not a catalog model; from the Hub: "),
    (["--seq-len", "4096", "--model", "openai-community/gpt2"], "error: training.seq_len:"),
    (["--budget", "24XB"], "error: --budget: cannot read '24XB'"),
    (["--set", "lora.surprise=1"], "error: lora.surprise: Extra inputs are not permitted"),
    (["missing.yaml"], "error: missing.yaml: no such file"),
    (["--alloc-conf", "max_split_size_mb:1"], "error: hardware.pytorch_cuda_alloc_conf:"),
    (["--gradient-accumulation-steps", "0"], "error: training.gradient_accumulation_steps: Input should be greater "
                                              "than or equal to 1"),
    (["--gradient-accumulation-steps", "two"], "--gradient-accumulation-steps: invalid int value"),
    (["--reduce-bucket-size", "5e8"], "error: hardware.reduce_bucket_size: is a DeepSpeed ZeRO setting"),
    (["--reduce-bucket-size", "2.5"], "--reduce-bucket-size: expected a whole element count"),
    (["--sharding", "zero3", "--num-gpus", "2", "--stage3-prefetch-bucket-size", "-1"],
     "error: hardware.stage3_prefetch_bucket_size:"),
])
def test_bad_input_exits_2_naming_the_field(args: list[str], field: str) -> None:
    out = run("check", *LLAMA_QLORA, *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert field in out.stderr and out.stdout == ""


def test_no_model_and_bad_choice() -> None:
    out = run("estimate", "--method", "qlora")
    assert out.returncode == 2 and "error: model: Field required" in out.stderr
    out = run("estimate", *LLAMA_QLORA, "--optim", "adam_of_my_dreams")
    assert out.returncode == 2 and "--optim" in out.stderr  # argparse names the flag
    assert run().returncode == 2  # no command: usage on stderr


# ------------------------------------------------------------------------------------- estimate / fit


def test_estimate_json_is_the_api_response() -> None:
    out = run("estimate", *LLAMA_QLORA, "--r", "16", "--lora-alpha", "32", "--target-modules", "all-linear",
              "--optim", "paged_adamw_8bit", "--gpu", "nvidia-rtx-4090", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["parameters"]["total"] == 8030261248
    assert data["parameters"]["trainable"] == 41943040  # README: r=16 on all-linear
    req, source = resolve_request(PlanRequest(
        model="meta-llama/Llama-3.1-8B", method="qlora",
        lora={"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
        training={"optim": "paged_adamw_8bit"}, hardware={"gpu": "nvidia-rtx-4090"}))
    assumed = data.pop("assumed")  # the defaults the CLI filled (tests/test_cli_inputs.py)
    assert data == with_source(estimate(req), source).model_dump(mode="json")
    assert data["source"]["kind"] == "catalog" and data["source"]["hub_id"] == "meta-llama/Llama-3.1-8B"
    assert [a["field"] for a in assumed] == ["training.precision", "training.micro_batch_size",
                                             "training.gradient_accumulation_steps", "training.seq_len",
                                             "training.gradient_checkpointing", "training.attn_implementation",
                                             "hardware.num_gpus", "lora.lora_dropout", "quantization.load_in_8bit",
                                             "quantization.bnb_4bit_use_double_quant",
                                             "quantization.bnb_4bit_compute_dtype", "quantization.prepare_kbit"]


def test_alloc_conf_flag() -> None:
    out = run("estimate", *LLAMA_QLORA, "--alloc-conf", "expandable_segments:True", "--json")
    assert out.returncode == 0, out.stderr
    req, source = resolve_request(PlanRequest(model="meta-llama/Llama-3.1-8B", method="qlora",
                                              hardware={"pytorch_cuda_alloc_conf": "expandable_segments:True"}))
    expected = with_source(estimate(req), source)
    data = json.loads(out.stdout)
    data.pop("assumed")
    assert data == expected.model_dump(mode="json")
    assert expected.allocator.rule.startswith("expandable_segments/checkpointed")
    assert expected.allocator.expandable_segments_saves_bytes == 0  # already on


def test_gradient_accumulation_steps_flag(tmp_path: Path) -> None:
    """--gradient-accumulation-steps N is training.gradient_accumulation_steps: the API's numbers for that request
    (the accumulated gradients held: more than without), and it overrides a file's value."""
    out = run("estimate", *LLAMA_QLORA, "--gradient-accumulation-steps", "8", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert "training.gradient_accumulation_steps" not in {a["field"] for a in data.pop("assumed")}
    req, source = resolve_request(PlanRequest(model="meta-llama/Llama-3.1-8B", method="qlora",
                                              training={"gradient_accumulation_steps": 8}))
    assert data == with_source(estimate(req), source).model_dump(mode="json")
    once = estimate(req.model_copy(update={"training": req.training.model_copy(
        update={"gradient_accumulation_steps": 1})}))
    assert data["memory"]["total"] > once.memory.total
    args = tmp_path / "training_args.json"
    args.write_text(json.dumps({"output_dir": "o", "per_device_train_batch_size": 1, "gradient_accumulation_steps": 4}))
    for flag, steps in ((["--gradient-accumulation-steps", "8"], 8), ([], 4)):
        body, notes = cli.build_body(cli.build_parser().parse_args(["estimate", str(args), *LLAMA_QLORA, *flag]))
        assert body["training"]["gradient_accumulation_steps"] == steps
        assert "training.gradient_accumulation_steps" not in {n.field for n in notes if n.kind == "assumed"}


def test_deepspeed_bucket_flags() -> None:
    """--reduce-bucket-size / --stage3-prefetch-bucket-size take DeepSpeed's spelling (5e8) or 'auto' and are the
    request's hardware fields."""
    flags = ["--sharding", "zero3", "--num-gpus", "2", "--reduce-bucket-size", "5e8",
             "--stage3-prefetch-bucket-size", "auto"]
    body, _ = cli.build_body(cli.build_parser().parse_args(["estimate", *LLAMA_QLORA, *flags]))
    assert body["hardware"]["reduce_bucket_size"] == 500_000_000
    assert body["hardware"]["stage3_prefetch_bucket_size"] == "auto"


def test_estimate_table() -> None:
    out = run("estimate", *LLAMA_QLORA, "--gpu", "nvidia-rtx-4090")
    assert out.returncode == 0, out.stderr
    result = estimate(PlanRequest(model="meta-llama/Llama-3.1-8B", method="qlora",
                                  hardware={"gpu": "nvidia-rtx-4090"}))
    text = out.stdout
    assert "8,030,261,248" in text and f"{result.parameters.trainable:,}" in text
    assert f"peak ({result.peak.phase})" in text and "<- peak" in text
    memory_total = [line for line in text.splitlines() if line.strip().startswith("total ") and "base" not in line]
    assert len(memory_total) == 1
    total_line = memory_total[0]
    assert cli.gib(result.memory.total) in total_line and f"{result.memory.total:,}" in total_line
    assert "GiB" in text and " GB" not in text  # binary units
    assert "nvidia-rtx-4090 (" in text and "fits" in text


def test_fit_text_and_json() -> None:
    out = run("fit", *LLAMA_QLORA, "--budget", "24GiB")
    assert out.returncode == 0, out.stderr
    for heading in ("Budget per GPU: 24.00 GiB", "training.micro_batch_size", "training.seq_len", "lora.r",
                    "best that fits:", "GPU plan", "nvidia-rtx-3060-12gb"):
        assert heading in out.stdout
    text = out.stdout
    out = run("fit", *LLAMA_QLORA, "--budget", "24GiB", "--json")
    data = json.loads(out.stdout)
    assert data["budget_bytes"] == 24 * 2**30 and data["budget_source"] == "budget"
    mbs = data["searches"]["micro_batch_size"]
    assert mbs["total_bytes"] <= 24 * 2**30 < mbs["next_total_bytes"]
    assert re.search(rf"training\.micro_batch_size +{mbs['value']} +total {cli.gib(mbs['total_bytes'])}; "
                     rf"{mbs['value'] + 1} needs {cli.gib(mbs['next_total_bytes'])}", text)


def test_files_are_merged_and_unknown_keys_go_to_stderr(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"], "use_dora": False, "bias": "none",
        "base_model_name_or_path": "meta-llama/Llama-3.1-8B", "shiny_new_option": True}))
    (tmp_path / "bnb.json").write_text(json.dumps({
        "quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "torch.bfloat16",
        "llm_int8_skip_modules": ["lm_head", "mlp"]}))
    out = run("estimate", str(tmp_path), str(tmp_path / "bnb.json"), "--seq-len", "1024", "--json")
    assert out.returncode == 0, out.stderr
    assert "warning:" in out.stderr and "adapter_config.json: shiny_new_option: unknown" in out.stderr
    assert "bnb.json: llm_int8_skip_modules: unsupported" in out.stderr
    data = json.loads(out.stdout)
    assert data["parameters"]["trainable"] == 32 * 16 * ((4096 + 4096) + (4096 + 1024))  # LoRA r=16 on q, v
    assert data["quantization"] is not None


def test_axolotl_yaml_and_stdin(tmp_path: Path) -> None:
    yml = tmp_path / "qlora.yml"
    yml.write_text("base_model: meta-llama/Llama-3.1-8B\nadapter: qlora\nload_in_4bit: true\nlora_r: 16\n"
                   "lora_target_linear: true\nsequence_len: 2048\nmicro_batch_size: 1\ngradient_checkpointing: true\n"
                   "optimizer: paged_adamw_8bit\nflash_attention: true\nbf16: true\nlearning_rate: 0.0002\n"
                   "num_epochs: 3\ndatasets:\n  - path: x\n    type: alpaca\nlora_rr: 3\n")
    out = run("check", str(yml), "--budget", "24GiB")
    assert out.returncode == 0, out.stderr
    assert "lora_rr: unknown" in out.stderr
    assert "ignored (does not affect memory): learning_rate, num_epochs, datasets" in out.stderr
    quiet = run("check", str(yml), "--budget", "24GiB", "--quiet")
    assert "lora_rr: unknown" in quiet.stderr and "note:" not in quiet.stderr
    piped = run("check", "-", "--budget", "24GiB", stdin=json.dumps({"model": "meta-llama/Llama-3.1-8B",
                                                                     "method": "qlora"}))
    assert piped.returncode == 0 and piped.stdout.startswith("fits: ")


# ------------------------------------------------------------------------------------------- hygiene


def test_choices_match_the_request_model() -> None:
    assert get_args(core_request.Method) == cli_flags.METHODS
    assert get_args(core_request.Precision) == cli_flags.PRECISIONS
    assert get_args(core_request.Optim) == cli_flags.OPTIMS
    assert get_args(core_request.Sharding) == cli_flags.SHARDINGS
    assert get_args(core_request.AttnImpl) == cli_flags.ATTN_IMPLS
    assert get_args(core_request.Framework) == cli_flags.FRAMEWORKS


def test_help_is_light_and_estimate_never_loads_torch() -> None:
    code = (
        "import contextlib, io, json, sys\n"
        "from app.cli import main\n"
        "heavy = ('torch', 'fastapi', 'starlette', 'transformers', 'httpx', 'pydantic', 'app.core', 'yaml')\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "after_help = [m for m in heavy if m in sys.modules]\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = main(['estimate', '--model', 'meta-llama/Llama-3.1-8B', '--method', 'qlora'])\n"
        "print(json.dumps([after_help, rc, [m for m in heavy[:5] if m in sys.modules]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [[], 0, []]


# ---------------------------------------------------------------------------------------------- --url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """uvicorn serving app.main:app on a free 127.0.0.1 port; killed afterwards."""
    with running_server(tmp_path_factory.mktemp("server"), env=ENV) as url:
        yield url


def _json(*args: str) -> Any:
    out = run(*args, "--json")
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_url_gives_the_same_numbers(server: str, launcher: list[str]) -> None:
    args = [*LLAMA_QLORA, "--r", "16", "--target-modules", "all-linear", "--gpu", "nvidia-rtx-4090"]
    here = _json("estimate", *args)
    there = run("estimate", *args, "--json", "--url", server, launcher=launcher)
    assert there.returncode == 0, there.stderr
    assert json.loads(there.stdout) == here
    assert here["parameters"]["total"] == 8030261248

    ok = run("check", "--budget", "24GiB", *LLAMA_QLORA, "--url", server, launcher=launcher)
    short = run("check", "--budget", "8GiB", *LLAMA_QLORA, "--url", server + "/", launcher=launcher)
    assert (ok.returncode, short.returncode) == (0, 1)
    assert ok.stdout == run("check", "--budget", "24GiB", *LLAMA_QLORA).stdout


def test_url_fit_and_errors(server: str) -> None:
    assert _json("fit", *LLAMA_QLORA, "--budget", "24GiB", "--url", server) == _json("fit", *LLAMA_QLORA,
                                                                                     "--budget", "24GiB")
    bad = run("check", *LLAMA_QLORA, "--r", "0", "--url", server)
    assert bad.returncode == 2 and "error: lora.r: Input should be greater than or equal to 1" in bad.stderr
    bad = run("fit", *LLAMA_QLORA, "--gpu", "nope", "--url", server)
    assert bad.returncode == 2 and "error: hardware.gpu: unknown gpu 'nope'" in bad.stderr


def test_dead_url_exits_3() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # closed again: nothing listens there
    out = run("check", *LLAMA_QLORA, "--budget", "24GiB", "--url", url)
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert f"error: cannot reach {url}/api/v1/estimate" in out.stderr and "server running" in out.stderr


def test_model_flag_replaces_an_unknown_base_model(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "/home/me/checkpoints/llama-3.1-8b-merged"}))
    without = run("estimate", str(tmp_path))
    assert without.returncode == 2 and "base_model_name_or_path: unsupported" in without.stderr
    assert "error: model: Field required" in without.stderr
    with_model = run("estimate", str(tmp_path), "--model", "meta-llama/Llama-3.1-8B", "--json")
    assert with_model.returncode == 0
    assert not [line for line in with_model.stderr.splitlines() if "detected" not in line and "assumed" not in line]
    assert json.loads(with_model.stdout)["parameters"]["trainable"] == 32 * 8 * ((4096 + 4096) + (4096 + 1024))
