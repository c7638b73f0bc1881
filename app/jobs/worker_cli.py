"""``peft-planner worker [--gpu ID[=DEVICE] ...] [--name NAME] [--no-traces]``: a worker for a shared store.

Needs ``PEFT_PLANNER_DATABASE_URL`` (or ``--database-url``). Without ``--gpu`` the node's CUDA devices are
detected in a short-lived spawned process (torch is not imported here) and named by their catalog id
(:func:`app.jobs.gpus.catalog_gpu_id`); a node without CUDA runs one ``cpu`` slot. ``--gpu nvidia-l4``
(no device) advertises a catalog id on a ``cpu`` slot: CPU calibrations for tests and demos. The same list
can come from ``PEFT_PLANNER_WORKER_GPUS`` (comma-separated). ``cpu`` slots also run the fleet's traces
(``POST /api/v1/trace`` offloaded by the API, app/jobs/traces.py) unless ``--no-traces``. Stops cleanly on
SIGTERM/SIGINT (running jobs are given back to the queue). See docs/deployment.md.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

DETECT_TIMEOUT_S = 120


def _cuda_devices() -> list[dict[str, Any]]:
    """Spawned-process entry point: name and total memory of each visible CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        out.append({"device": f"cuda:{index}", "name": props.name, "total_bytes": int(props.total_memory)})
    return out


def detect_slots() -> list[dict[str, Any]]:
    """One slot per CUDA device with its catalog id, else one ``cpu`` slot."""
    from app.jobs.gpus import catalog_gpu_id

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        devices = pool.apply_async(_cuda_devices).get(timeout=DETECT_TIMEOUT_S)
    slots = []
    for dev in devices:
        gpu_id = catalog_gpu_id(dev["name"], dev["total_bytes"])
        if gpu_id is None:
            raise SystemExit(f"error: {dev['device']} ({dev['name']}, {dev['total_bytes']:,} bytes) matches no "
                             f"catalog GPU; name it with --gpu ID={dev['device']}")
        slots.append({**dev, "gpu": gpu_id})
    return slots or [{"device": "cpu", "name": "cpu", "total_bytes": None, "gpu": "cpu"}]


def parse_slots(specs: Sequence[str]) -> list[dict[str, Any]]:
    """``ID`` (a cpu slot advertising ID) or ``ID=cuda:N``; IDs are catalog GPU ids or ``cpu``."""
    from app.core.catalog import gpus

    slots = []
    for spec in specs:
        gpu_id, _, device = spec.partition("=")
        device = device or "cpu"
        if gpu_id != "cpu" and gpu_id not in gpus():
            raise SystemExit(f"error: --gpu {spec}: unknown catalog GPU {gpu_id!r}; one of: cpu, {', '.join(gpus())}")
        if device != "cpu" and not (device.startswith("cuda:") and device[5:].isdigit()):
            raise SystemExit(f"error: --gpu {spec}: the device must be 'cpu' or 'cuda:N'")
        slots.append({"device": device, "name": device, "total_bytes": None, "gpu": gpu_id})
    return slots


def configured_slots(specs: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Slots from ``specs`` (``--gpu``), else ``PEFT_PLANNER_WORKER_GPUS``, else detected."""
    specs = list(specs) or [s.strip() for s in os.environ.get("PEFT_PLANNER_WORKER_GPUS", "").split(",") if s.strip()]
    return parse_slots(specs) if specs else detect_slots()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="peft-planner worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("PEFT_PLANNER_DATABASE_URL"),
                        help="postgresql://… (default: $PEFT_PLANNER_DATABASE_URL)")
    parser.add_argument("--gpu", action="append", default=None, metavar="ID[=DEVICE]",
                        help="a slot: catalog GPU id (or cpu) and its device (default cpu); repeat per GPU; "
                             "default: detect ($PEFT_PLANNER_WORKER_GPUS)")
    parser.add_argument("--name", help="worker id in the registry (default: HOST-PID)")
    parser.add_argument("--traces", action=argparse.BooleanOptionalAction, default=True,
                        help="cpu slots also run traces offloaded by the API (default: yes)")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("set PEFT_PLANNER_DATABASE_URL or --database-url (postgresql://…)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from app.jobs import pg_store
    from app.jobs.fleet import FleetWorker
    from app.settings import get_settings

    settings = get_settings().model_copy(update={"database_url": args.database_url})
    slots = configured_slots(args.gpu or ())
    store = pg_store(settings)
    worker = FleetWorker(store, slots, settings.calibration_timeout_s, worker_id=args.name, traces=args.traces,
                         trace_timeout_s=settings.trace_timeout_s)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker.start()
    stop.wait()
    worker.stop()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
