"""app.core stays pure Python: importing it (and running an estimate) loads neither torch nor FastAPI."""

from __future__ import annotations

import json
import subprocess
import sys


def test_core_imports_neither_torch_nor_fastapi() -> None:
    code = (
        "import sys, json\n"
        "from app.core import PlanRequest, estimate\n"
        "from app.core.throughput import throughput\n"
        "from app.core.fit import fit\n"
        "req = PlanRequest(model='meta-llama/Llama-3.1-8B', method='qlora')\n"
        "estimate(req); throughput(req); fit(req)\n"
        "print(json.dumps(sorted(m for m in ('torch', 'fastapi', 'transformers', 'peft', 'bitsandbytes', 'starlette')"
        " if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout) == []


def test_api_starts_without_torch() -> None:
    """The API imports torch lazily: building the app and answering an estimate does not load it."""
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from app.main import app\n"
        "body = {'model': 'openai-community/gpt2', 'training': {'seq_len': 512}}\n"
        "r = TestClient(app).post('/api/v1/estimate', json=body)\n"
        "assert r.status_code == 200, r.text\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
