"""The 4-bit vs 16-bit matmul microbenchmark of a calibration: how much slower bitsandbytes' on-the-fly
dequantization (``bnb.matmul_4bit``) makes one linear than ``F.linear`` on the same device, for the model's largest
layers. torch and bitsandbytes are imported inside the function."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from app.core.request import PlanRequest


def matmul_microbench(req: PlanRequest, device: str, shapes: list[tuple[int, int]], iters: int = 5) -> list[dict]:
    """4-bit ``bnb.matmul_4bit`` vs 16-bit ``F.linear`` for the model's largest layers at M = batch·seq rows: seconds
    per call (CUDA events on a GPU, ``perf_counter`` on CPU) and their ratio. The caller frees the cache."""
    import bitsandbytes as bnb
    import torch
    import torch.nn.functional as F

    from app.trace.engine import COMPUTE_DTYPES

    q = req.quantization
    dtype = COMPUTE_DTYPES[q.bnb_4bit_compute_dtype]
    m = req.training.micro_batch_size * req.training.seq_len
    cuda = device.startswith("cuda")
    out = []

    def timed(fn: Callable[[], Any]) -> float:
        fn()  # warm-up
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000 / iters
        started = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - started) / iters

    for n, k in shapes:
        row: dict[str, Any] = {"m": m, "n": n, "k": k, "dtype": str(dtype).removeprefix("torch."),
                               "device": "CUDA" if cuda else "CPU", "quant_type": q.bnb_4bit_quant_type}
        try:
            with torch.no_grad():
                a = torch.randn(m, k, dtype=dtype, device=device)
                w = torch.randn(n, k, dtype=dtype, device=device) * 0.02
                packed, state = bnb.functional.quantize_4bit(
                    w, blocksize=q.blocksize, compress_statistics=q.bnb_4bit_use_double_quant,
                    quant_type=q.bnb_4bit_quant_type)
                t16 = timed(lambda a=a, w=w: F.linear(a, w))
                t4 = timed(lambda a=a, p=packed, s=state: bnb.matmul_4bit(a, p.t(), quant_state=s))
            row.update(linear_16bit_s=round(t16, 7), matmul_4bit_s=round(t4, 7),
                       ratio=round(t4 / t16, 3) if t16 > 0 else None)
            del a, w, packed, state
        except Exception as exc:  # a kernel that does not support this shape on this device
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        out.append(row)
    return out
