"""The library releases whose behaviour the planner models (every rule and precomputed inventory)."""

from __future__ import annotations

MODELLED_VERSIONS: dict[str, str] = {
    "transformers": "5.24.0",
    "peft": "0.21.2",
    "bitsandbytes": "0.50.2",
    "torch": "2.13.0",
    "liger_kernel": "0.8.5",  # use_liger_kernel: its kernels' saved tensors and chunking (docs/switches.md)
}
