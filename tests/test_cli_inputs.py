"""The CLI says what it assumed and what it read: defaults printed (and refused by --strict), HF TrainingArguments
and TRL SFTConfig files detected and mapped (never as axolotl), "did you mean" for unknown ids. Real commands in
subprocesses; the fixtures are written by the real transformers / TRL / PEFT classes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from app.core import PlanRequest
from app.core import estimate as core_estimate
from app.models.resolve import resolve_request, with_source

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
LLAMA = "meta-llama/Llama-3.1-8B"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)


def estimate(req: PlanRequest) -> Any:
    """What the CLI prints for ``req``: the core's answer with where the config came from."""
    plan, source = resolve_request(req)
    return with_source(core_estimate(plan), source)


def _quiet_import() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import transformers
        import trl

    return transformers, trl


def _sft_config(trl: Any, **kwargs: Any) -> Any:
    # TRL 1.16's SFTConfig passes transformers 5's deprecated gradient_checkpointing=True (its default), which
    # warns; the warning is TRL's, not ours
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`gradient_checkpointing` is deprecated", FutureWarning)
        return trl.SFTConfig(**kwargs)


@pytest.fixture(scope="module")
def training_args_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """training_args.json as transformers 5.24 writes it: TrainingArguments(...).to_json_string()."""
    transformers, _ = _quiet_import()
    out = tmp_path_factory.mktemp("hf")
    args = transformers.TrainingArguments(output_dir=str(out), per_device_train_batch_size=2,
                                          gradient_accumulation_steps=4, activation_checkpointing=True,
                                          optim="paged_adamw_8bit", bf16=True, learning_rate=2e-4, use_cpu=True)
    path = out / "training_args.json"
    path.write_text(args.to_json_string())
    return path


@pytest.fixture(scope="module")
def sft_config_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TRL 1.16's SFTConfig(...).to_json_string(): max_length 4096, packed, Liger kernels on."""
    _, trl = _quiet_import()
    assert trl.__version__ == "1.16.0"
    out = tmp_path_factory.mktemp("trl")
    config = _sft_config(trl, output_dir=str(out), per_device_train_batch_size=2, max_length=4096, packing=True,
                         use_liger_kernel=True, optim="adamw_torch", bf16=True, use_cpu=True,
                         model_init_kwargs={"dtype": "bfloat16"})
    path = out / "sft_config.json"
    path.write_text(config.to_json_string())
    return path


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT 0.21 adapter directory (LoraConfig.save_pretrained) for Llama 3.1 8B, r=16 on q_proj/v_proj."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from peft import LoraConfig
    out = tmp_path_factory.mktemp("adapter")
    LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
               base_model_name_or_path=LLAMA).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def bnb_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BitsAndBytesConfig(...).to_json_string(): NF4, double quantization, bf16 compute."""
    transformers, _ = _quiet_import()
    path = tmp_path_factory.mktemp("bnb") / "bnb.json"
    path.write_text(transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                    bnb_4bit_use_double_quant=True,
                                                    bnb_4bit_compute_dtype="bfloat16").to_json_string())
    return path


# ------------------------------------------------------------------------------------- assumed defaults


def test_every_assumed_default_is_printed_and_in_json() -> None:
    out = run("estimate", "--model", LLAMA, "--method", "qlora", "--json")
    assert out.returncode == 0, out.stderr
    # the planner's defaults (README: seq_len 2048, adamw_torch, r=8 on PEFT's default targets, an A100 80GB)
    for line in ('note: assumed training.seq_len=2048 (default; not in any input)',
                 'note: assumed training.optim="adamw_torch" (default; not in any input)',
                 'note: assumed training.micro_batch_size=1 (default; not in any input)',
                 'note: assumed training.gradient_checkpointing=true (default; not in any input)',
                 'note: assumed lora.r=8 (default; not in any input)',
                 'note: assumed lora.target_modules=null (default; not in any input)',
                 'note: assumed hardware.gpu="nvidia-a100-80gb" (default; not in any input)',
                 'note: assumed quantization.bnb_4bit_use_double_quant=true (default; not in any input)'):
        assert line in out.stderr.splitlines(), out.stderr
    assert "assumed method=" not in out.stderr and "assumed model" not in out.stderr  # both given
    data = json.loads(out.stdout)
    assumed = {a["field"]: a["value"] for a in data.pop("assumed")}
    assert assumed["training.seq_len"] == 2048 and assumed["training.optim"] == "adamw_torch"
    # the values printed are the ones the estimate used: the same request with them spelled out
    spelled = PlanRequest.model_validate({"model": LLAMA, "method": "qlora", **_nested(assumed)})
    assert data == estimate(spelled).model_dump(mode="json")

    given = run("estimate", "--model", LLAMA, "--method", "qlora", "--seq-len", "4096", "--optim", "adamw_torch")
    assert "training.seq_len" not in given.stderr and "training.optim" not in given.stderr
    assert "note: assumed training.precision" in given.stderr
    assert "note: assumed" not in run("estimate", "--model", LLAMA, "--method", "qlora", "-q").stderr


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        section, field = path.split(".")
        out.setdefault(section, {})[field] = value
    return out


def test_adapter_and_bnb_files_say_the_optimizer_is_assumed(adapter_dir: Path, bnb_json: Path) -> None:
    """The issue's CI gate: adapter_config.json + BitsAndBytesConfig silently used adamw_torch and seq_len 2048."""
    out = run("check", str(adapter_dir), str(bnb_json), "--budget", "24GiB")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert f"note: {adapter_dir / 'adapter_config.json'}: detected PEFT adapter_config.json (peft_type 'LORA')" in lines
    assert f"note: {bnb_json}: detected transformers BitsAndBytesConfig" in lines
    assert 'note: assumed training.optim="adamw_torch" (default; not in any input)' in lines
    assert "note: assumed training.seq_len=2048 (default; not in any input)" in lines
    assert not any("assumed lora.r" in line or "assumed quantization.bnb_4bit" in line for line in lines)


def test_strict_refuses_assumed_settings_naming_each(adapter_dir: Path, bnb_json: Path, tmp_path: Path) -> None:
    out = run("check", str(adapter_dir), str(bnb_json), "--budget", "24GiB", "--strict")
    assert out.returncode == 2 and out.stdout == ""
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: --strict: ")]
    named = {line.split()[2] for line in errors}
    assert named == {"training.precision", "training.optim", "training.micro_batch_size",
                     "training.gradient_accumulation_steps", "training.seq_len", "training.gradient_checkpointing",
                     "training.attn_implementation", "hardware.gpu", "hardware.num_gpus", "quantization.prepare_kbit"}
    # everything given: strict passes and prints no assumption
    full = run("check", str(adapter_dir), str(bnb_json), "--budget", "24GiB", "--strict", "--precision", "bf16",
               "--optim", "paged_adamw_8bit", "--micro-batch-size", "1", "--gradient-accumulation-steps", "1",
               "--seq-len", "2048",
               "--gradient-checkpointing", "--attn", "sdpa", "--gpu", "nvidia-rtx-4090", "--num-gpus", "1",
               "--set", "quantization.prepare_kbit=true")
    assert full.returncode == 0, full.stderr
    assert "assumed" not in full.stderr and full.stdout.startswith("fits: ")
    # a file's own defaults count as assumed too: axolotl's sequence_len 512
    yml = tmp_path / "qlora.yml"
    yml.write_text(f"base_model: {LLAMA}\nadapter: qlora\nload_in_4bit: true\nlora_r: 16\nlora_target_linear: true\n"
                   "micro_batch_size: 1\ngradient_accumulation_steps: 8\ngradient_checkpointing: true\n"
                   "optimizer: paged_adamw_8bit\nbf16: true\n")
    ax = run("estimate", str(yml), "--strict", "--gpu", "nvidia-rtx-4090", "--num-gpus", "1", "--attn", "sdpa")
    assert ax.returncode == 2
    assert (f"error: --strict: training.seq_len was not given ({yml}: assumed training.seq_len=512 (axolotl's "
            "default; sequence_len is not set)); set it in a file, with its flag or --set training.seq_len=VALUE"
            ) in ax.stderr.splitlines()


# ------------------------------------------------------------------------------ TrainingArguments / TRL


def test_training_arguments_json_is_detected_and_mapped(training_args_json: Path, adapter_dir: Path,
                                                        bnb_json: Path) -> None:
    out = run("estimate", str(adapter_dir), str(bnb_json), str(training_args_json), "--json")
    assert out.returncode == 0, out.stderr
    assert (f"note: {training_args_json}: detected HF TrainingArguments (per_device_train_batch_size, optim, "
            "lr_scheduler_type, …)") in out.stderr.splitlines()
    assert "axolotl" not in out.stderr
    data = json.loads(out.stdout)
    assumed = {a["field"]: a for a in data.pop("assumed")}
    assert assumed["training.precision"]["source"] == str(training_args_json)  # the model dtype is not in it
    assert "training.seq_len" in assumed and assumed["training.seq_len"]["source"] == "planner"
    # QLoRA stays QLoRA (LoRA + bitsandbytes), seq_len stays the planner's 2048, batch 2 accumulated over 4
    # micro-batches, checkpointing on, paged 8-bit AdamW: what the three files say
    expected = PlanRequest(model=LLAMA, method="qlora",
                           lora={"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]},
                           quantization={"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                                         "bnb_4bit_compute_dtype": "bfloat16"},
                           training={"micro_batch_size": 2, "gradient_accumulation_steps": 4,
                                     "gradient_checkpointing": True, "optim": "paged_adamw_8bit", "precision": "bf16"})
    assert data == estimate(expected).model_dump(mode="json")


def test_training_arguments_as_yaml_dict(training_args_json: Path, tmp_path: Path) -> None:
    """to_dict() written as YAML (a launcher's config): read by content, same format."""
    import yaml

    data = json.loads(training_args_json.read_text())
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    out = run("estimate", str(path), "--model", LLAMA, "--method", "lora", "--json")
    assert out.returncode == 0, out.stderr
    assert "detected HF TrainingArguments" in out.stderr
    expected = PlanRequest(model=LLAMA, method="lora",
                           training={"micro_batch_size": 2, "gradient_accumulation_steps": 4,
                                     "optim": "paged_adamw_8bit"})
    assert {k: v for k, v in json.loads(out.stdout).items() if k != "assumed"} == estimate(expected).model_dump(
        mode="json")


def test_sft_config_is_detected_and_liger_mapped(sft_config_json: Path) -> None:
    out = run("estimate", str(sft_config_json), "--model", LLAMA, "--method", "lora", "--json")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert f"note: {sft_config_json}: detected TRL SFTConfig (max_length, packing, dataset_text_field, …)" in lines
    assert not any("use_liger_kernel" in line for line in lines)  # mapped to training.use_liger_kernel
    assert not any("loss_type" in line for line in lines)  # TRL's fused LM head loss: training.framework 'trl'
    data = json.loads(out.stdout)
    assumed = {a["field"]: a["value"] for a in data.pop("assumed")}
    assert "training.seq_len" not in assumed  # max_length is given
    # packed rows and no attn_implementation in model_init_kwargs: FlashAttention-2's varlen kernel
    assert assumed["training.attn_implementation"] == "flash_attention_2"
    # max_length 4096 packed → seq_len 4096; batch 2; SFTConfig's activation checkpointing default (on);
    # model_init_kwargs dtype bfloat16 → precision bf16
    expected = PlanRequest(model=LLAMA, method="lora",
                           training={"micro_batch_size": 2, "seq_len": 4096, "gradient_checkpointing": True,
                                     "optim": "adamw_torch", "precision": "bf16", "framework": "trl",
                                     "packing": True, "use_liger_kernel": True,
                                     "attn_implementation": "flash_attention_2"})
    assert data == estimate(expected).model_dump(mode="json")


def test_sft_config_without_dtype_is_trl_float32_load(tmp_path: Path) -> None:
    """TRL loads a model named by id in float32 unless model_init_kwargs says otherwise (SFTTrainer docstring):
    bf16 autocast over float32 weights is the planner's bf16-mixed. A partial YAML takes SFTConfig's defaults."""
    path = tmp_path / "sft.yaml"
    path.write_text("max_length: 1024\npacking: false\ndataset_text_field: text\n")
    out = run("estimate", str(path), "--model", LLAMA, "--method", "lora", "--json")
    assert out.returncode == 0, out.stderr
    assumed = {a["field"]: a["value"] for a in json.loads(out.stdout)["assumed"]}
    assert assumed["training.precision"] == "bf16-mixed"
    _, trl = _quiet_import()
    defaults = _sft_config(trl, output_dir=str(tmp_path), use_cpu=True)
    assert assumed["training.micro_batch_size"] == defaults.per_device_train_batch_size == 8
    assert assumed["training.gradient_checkpointing"] is defaults.activation_checkpointing is True
    assert assumed["training.optim"] == defaults.optim == "adamw_torch_fused"
    assert assumed["training.gradient_accumulation_steps"] == defaults.gradient_accumulation_steps == 1


# ------------------------------------------------------------------------------------------ did you mean


@pytest.mark.parametrize(("flag", "value", "loc", "suggestion"), [
    ("--model", "Qwen/Qwen3-8B-Base", "model", "'Qwen/Qwen3-8B'"),
    ("--model", "unsloth/Llama-3.2-1B-Instruct-bnb-4bit", "model", "'meta-llama/Llama-3.2-1B'"),
    ("--gpu", "RTX 4090", "hardware.gpu", "'nvidia-rtx-4090'"),
    ("--gpu", "nvidia-a100-80GB", "hardware.gpu", "'nvidia-a100-80gb'"),
])
def test_unknown_ids_get_a_did_you_mean(flag: str, value: str, loc: str, suggestion: str) -> None:
    args = ["--model", LLAMA, "--method", "lora", "-q", flag, value]
    out = run("check", *args)
    assert out.returncode == 2 and out.stdout == ""
    # an unknown org/name is looked up on the Hub first (offline here): the refusal names the id, then suggests
    assert out.stderr.startswith(f"error: {loc}: ") and f"did you mean {suggestion}?" in out.stderr
