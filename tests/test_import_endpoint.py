"""POST /api/v1/import and the page's Import: uploaded trainer configs become the request the CLI would build from
the same files, except that the server reads no file a config names; errors name the file; the page shows the
imported plan in its form with the notes, and its numbers are estimate()'s."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from fastapi.testclient import TestClient

from app.core import PlanRequest, estimate, format_bytes
from app.forms import body_to_form, form_to_body, parse_form
from app.importers import ConfigImportError, import_data, import_file
from app.limits import MAX_IMPORT_FILES as MAX_FILES
from app.limits import MAX_UPLOAD_BYTES as MAX_FILE_BYTES
from app.main import create_app
from tests.test_page_fields import BASE, CASES
from tests.test_pages import Page

AXOLOTL = """base_model: meta-llama/Llama-3.1-8B
adapter: qlora
load_in_4bit: true
lora_r: 16
lora_alpha: 32
lora_target_linear: true
sequence_len: 4096
micro_batch_size: 2
gradient_accumulation_steps: 4
gradient_checkpointing: true
optimizer: adamw_bnb_8bit
bf16: true
flash_attention: true
deepspeed: deepspeed_configs/zero3.json
datasets:
  - path: tatsu-lab/alpaca
    type: alpaca
"""
TINY_LLAMA = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1000}


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


def test_axolotl_yaml_as_the_body(client: TestClient) -> None:
    """Each field of the YAML above, by hand: axolotl's adapter qlora is bitsandbytes NF4 with double quantization,
    lora_target_linear is all-linear, flash_attention is FlashAttention-2, and 'zero3.json' (not uploaded, so not
    read) gives ZeRO stage 3 by its name."""
    r = client.post("/api/v1/import?filename=qlora.yaml", content=AXOLOTL, headers={"content-type": "application/yaml"})
    assert r.status_code == 200, r.text
    out = r.json()
    req = PlanRequest.model_validate(out["request"])
    assert (req.model, req.method, req.training.framework) == ("meta-llama/Llama-3.1-8B", "qlora", "axolotl")
    assert (req.lora.r, req.lora.lora_alpha, req.lora.target_modules) == (16, 32, "all-linear")
    t = req.training
    assert (t.seq_len, t.micro_batch_size, t.gradient_accumulation_steps, t.gradient_checkpointing, t.optim,
            t.precision, t.attn_implementation) == (4096, 2, 4, True, "adamw_bnb_8bit", "bf16", "flash_attention_2")
    assert (req.quantization.bnb_4bit_quant_type, req.quantization.bnb_4bit_use_double_quant) == ("nf4", True)
    assert req.hardware.sharding == "zero3"
    notes = {(n["kind"], n["key"]): n["message"] for n in out["notes"]}
    assert notes[("detected", "")].startswith("detected axolotl config")
    assert "not read: the server reads no file a config names" in notes[("unsupported", "deepspeed")]
    assert ("assumed", "hardware.gpu") in notes and ("ignored", "datasets") in notes
    # the page link carries the same plan
    form = dict(parse_qsl(urlsplit(out["page"]).query, keep_blank_values=True))
    assert parse_form(form) == (req, [])


def test_the_server_reads_no_file_a_config_names(client: TestClient, tmp_path: Path) -> None:
    """The same YAML naming a model directory and a DeepSpeed JSON that exist here: the CLI reads both (the
    config.json's model, ZeRO stage 2 from the JSON), the server neither (no model, no stage: the file name says
    none), and says so."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(TINY_LLAMA))
    (tmp_path / "ds_custom.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    text = (f"base_model: {tmp_path / 'model'}\nadapter: lora\nsequence_len: 512\n"
            f"deepspeed: {tmp_path / 'ds_custom.json'}\n")
    (tmp_path / "run.yaml").write_text(text)
    cli = import_file(tmp_path / "run.yaml").body
    assert cli["model"] == {"config": TINY_LLAMA} and cli["hardware"]["sharding"] == "zero2"
    out = client.post("/api/v1/import", files={"f": ("run.yaml", text)}).json()
    assert "model" not in out["request"] and "sharding" not in out["request"].get("hardware", {})
    messages = " ".join(n["message"] for n in out["notes"])
    assert "upload its config.json" in messages and "ds_custom.json' not read" in messages
    # a `tune run` command whose --config is a path here is refused, naming the flag
    (tmp_path / "my.yaml").write_text("model:\n  _component_: torchtune.models.llama3_2.lora_llama3_2_1b\n")
    r = client.post("/api/v1/import", content=f"tune run lora_finetune_single_device --config {tmp_path / 'my.yaml'}",
                    headers={"content-type": "text/plain"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "upload", "--config"]


def test_a_hub_id_outside_the_catalog_is_kept(client: TestClient) -> None:
    out = client.post("/api/v1/import", content="base_model: SomeOrg/some-model-7b\nadapter: lora\n",
                      headers={"content-type": "text/plain"}).json()
    assert out["request"]["model"] == "SomeOrg/some-model-7b"


def test_files_merge_in_order(client: TestClient) -> None:
    """An axolotl YAML, then a model's config.json: the later file's model wins, as the CLI merges its FILEs."""
    out = client.post("/api/v1/import", files=[("f", ("qlora.yaml", AXOLOTL)),
                                               ("f", ("config.json", json.dumps(TINY_LLAMA)))]).json()
    assert out["request"]["model"] == {"config": TINY_LLAMA} and out["request"]["lora"]["r"] == 16
    assert out["page"] is None  # a config.json is not part of a URL
    assert [n["source"] for n in out["notes"] if n["kind"] == "detected"] == ["qlora.yaml", "config.json"]


def test_a_deepspeed_json_uploaded_with_its_trainer_config(client: TestClient) -> None:
    """The YAML names deepspeed_configs/zero3.json; the uploaded DeepSpeed file says stage 2 with the optimizer in
    host RAM and a 5e8-element reduce bucket: merged after the YAML, the file's settings win over its name."""
    ds = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}, "reduce_bucket_size": 5e8},
          "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "bf16": {"enabled": "auto"},
          "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}, "scheduler": {"type": "WarmupLR"},
          "activation_checkpointing": {"partition_activations": True}}
    out = client.post("/api/v1/import", files=[("f", ("qlora.yaml", AXOLOTL)),
                                               ("f", ("zero2.json", json.dumps(ds)))]).json()
    hw = out["request"]["hardware"]
    assert (hw["sharding"], hw["offload_optimizer"], hw["reduce_bucket_size"]) == ("zero2", "cpu", 500_000_000)
    assert out["request"]["training"]["micro_batch_size"] == 2  # "auto": the YAML's
    notes = {(n["source"], n["key"]): n["kind"] for n in out["notes"]}
    assert notes[("zero2.json", "")] == "detected"
    assert notes[("zero2.json", "activation_checkpointing")] == "unsupported"
    assert notes[("zero2.json", "optimizer")] == notes[("zero2.json", "scheduler")] == "ignored"
    assert any(n["message"].startswith("detected DeepSpeed config") for n in out["notes"])


def test_deepspeed_batch_keys_and_defaults() -> None:
    """Integer batch keys fix the training fields; a ZeRO-3 config without bucket sizes runs with DeepSpeed's own
    defaults (runtime/zero/config.py: reduce_bucket_size 5e8, stage3_prefetch_bucket_size 5e7 elements)."""
    data = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}
    body = import_data(data, "ds.json").body
    assert body == {"training": {"micro_batch_size": 4, "gradient_accumulation_steps": 2},
                    "hardware": {"sharding": "zero3", "reduce_bucket_size": 500_000_000,
                                 "stage3_prefetch_bucket_size": 50_000_000}}
    with pytest.raises(ConfigImportError) as info:
        import_data({**data, "train_micro_batch_size_per_gpu": 0}, "ds.json")
    assert info.value.key == "train_micro_batch_size_per_gpu"


def test_bad_uploads_name_the_file(client: TestClient) -> None:
    def post_text(content: bytes | str) -> tuple[int, dict[str, object]]:
        r = client.post("/api/v1/import?filename=x.yaml", content=content, headers={"content-type": "text/plain"})
        return r.status_code, r.json()["detail"][0]

    assert post_text(b"\xff\xfe") == (422, {"loc": ["body", "x.yaml"], "type": "not_text",
                                            "msg": "not UTF-8 text: upload the YAML, JSON or script itself"})
    status, detail = post_text("foo: 1\n")
    assert status == 422 and detail["loc"] == ["body", "x.yaml"] and "top-level keys: foo" in str(detail["msg"])
    assert post_text("")[0] == 422
    # escapes that no JSON answer can carry: a lone surrogate (JSON or YAML), NaN, binary data
    assert post_text('{"lora": {"r": 8}, "x\\ud800": 1}') == (
        422, {"loc": ["body", "x.yaml"], "type": "import_error",
              "msg": "'x\\ud800' holds a lone surrogate, which is not valid Unicode text"})
    assert post_text('base_model: "\\ud800"\nadapter: lora\n')[0] == 422
    for value in (".nan", "!!binary /w==", "2024-01-01"):
        status, detail = post_text(f"model: meta-llama/Llama-3.1-8B\nlora: {{r: {value}}}\n")
        assert (status, detail["type"]) == (422, "not_json"), value
    # the bounds, as GET /api/v1/limits serves them: 8 files of 256 KiB, 50,000 JSON values
    assert client.get("/api/v1/limits").json()["import"] == {"max_files": 8, "max_file_bytes": 262_144,
                                                             "max_values": 50_000}
    assert post_text("a: " + "x" * MAX_FILE_BYTES)[0] == 413
    many = [("f", (f"{i}.yaml", AXOLOTL)) for i in range(MAX_FILES + 1)]
    assert client.post("/api/v1/import", files=many).status_code == 413
    # YAML anchors: 1 KiB of text that stands for 10^7 values is refused, not expanded
    lines = ["model:", "  config:", "    model_type: llama", "    a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, name in zip("abcdef", "bcdefg", strict=True):
        lines.append(f"    {name}: &{name} [{', '.join([f'*{prev}'] * 10)}]")
    status, detail = post_text("\n".join(lines) + "\n")
    assert status == 413 and detail["type"] == "too_large"


def test_the_page_imports_into_its_form(client: TestClient) -> None:
    r = client.post("/import", files={"train_files": ("qlora.yaml", AXOLOTL)},
                    data={"model": "ignored/by-import", "gpu": "nvidia-rtx-4090", "r": "64"})
    assert r.status_code == 200, r.text[:2000]
    page = Page(r.text)
    # the config's fields replace the form's; the card, which no trainer config names, stays the form's
    for key, value in {"gpu": "nvidia-rtx-4090", "model": "meta-llama/Llama-3.1-8B", "method": "qlora", "r": "16",
                       "seq_len": "4096", "micro_batch_size": "2", "gradient_accumulation_steps": "4",
                       "optim": "adamw_bnb_8bit", "framework": "axolotl", "sharding": "zero3",
                       "attn_implementation": "flash_attention_2"}.items():
        assert page.fields[key] == value, key
    assert "Imported: what each file was read as" in r.text and "not read: the server reads no file" in r.text
    assert "hardware.gpu</code>: default" not in r.text and "hardware.num_gpus</code>: default" in r.text
    req, errors = parse_form(page.fields)
    assert errors == [] and req is not None
    assert page.cell("qlora", "total") == format_bytes(estimate(req).memory.total)
    # a pasted config imports the same way; an unreadable one is the page's error, naming it
    pasted = client.post("/import", data={"train_config": AXOLOTL})
    assert Page(pasted.text).fields["r"] == "16"
    bad = client.post("/import", data={"train_config": "foo: 1\n"})
    assert bad.status_code == 422 and "import: pasted train_config: not a PlanRequest body" in bad.text


@pytest.mark.parametrize("path", sorted(CASES))
def test_body_to_form_inverts_form_to_body(path: str) -> None:
    key, text, _, needs = CASES[path]
    body = form_to_body({**BASE, **needs, key: text})
    form, config_text = body_to_form(body)
    assert config_text is None
    assert PlanRequest.model_validate(form_to_body(form)) == PlanRequest.model_validate(body)


def test_an_uploaded_config_json_is_the_pages_model(client: TestClient) -> None:
    """POST / with a config.json file (the Model section's upload): the estimate is that model's."""
    r = client.post("/", files={"config_file": ("config.json", json.dumps(TINY_LLAMA))}, data={"method": "lora"})
    assert r.status_code == 200
    assert re.search(r'data-g="model">pasted config<', r.text)
    expected = estimate(PlanRequest.model_validate({**form_to_body({"method": "lora"}),
                                                    "model": {"config": TINY_LLAMA}}))
    assert Page(r.text).cell("lora", "total") == format_bytes(expected.memory.total)
