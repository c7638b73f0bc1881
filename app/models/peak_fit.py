"""Fitted activations for models outside the hand-written rules: made once per (config, settings), then stored.

:func:`ensure_peak_fit` runs after :func:`app.models.generic.ensure_generic` (from
:func:`app.models.resolve.resolve_request`). For a generic model it makes sure the core's registry
(:mod:`app.core.fitted_activations`) holds the fit of the request's activation settings
(:func:`app.core.fitted_activations.fit_key`):

1. in memory: free;
2. in the persistent store (the generic store's ``peak_fits`` table, keyed by the config hash — which includes
   the library versions —, the settings and the length bucket): one indexed read;
3. else :func:`app.models.peak_traces.fit_peak` traces small variants of the model in the build worker (one
   job at a time, stopped after ``generic_peak_fit_timeout_s``). A fit takes minutes on CPU (8-16 traces), so it
   runs in a background thread: the request that starts it waits at most ``generic_peak_fit_wait_s``, then is
   answered with the provisional peak ("no traced fit for these settings yet"); requests arriving while the fit
   runs do not wait, and every request after it gets the fitted peak.

A fit that cannot be made (a variant transformers cannot run on fake tensors, LLM.int8, a timeout) is stored
with its reason: the estimate stays analytic and ``peak.provisional`` says so; it is never a 4xx, since the
parameters and static memory are exact without it. Which fits were made: ``BUILDS`` counts worker runs.
Off with the setting ``generic_peak_fit`` (``PEFT_PLANNER_GENERIC_PEAK_FIT=false``).
"""

from __future__ import annotations

import logging
import threading

from app.core.errors import PlanError
from app.core.fitted_activations import PeakFit, fit_key, length_bucket, register_fit, registered_fit
from app.core.generic import config_key, uses_rules
from app.core.litgpt import is_litgpt
from app.core.request import PlanRequest
from app.models.generic import LOCK, request_config, run_in_worker, store
from app.settings import get_settings

BUILDS = {"fits": 0}  # worker fits run by this process (tests check a second request runs none)
_RUNNING: dict[tuple[str, str, int], threading.Event] = {}  # fits being made, set when each is registered
_RUNNING_LOCK = threading.Lock()
log = logging.getLogger("peft_planner.peak_fit")


def _register(key: str, settings: str, bucket: int, data: dict) -> None:
    register_fit(key, settings, bucket, PeakFit.from_data(data) if "phases" in data else str(data["error"]))


def ensure_peak_fit(req: PlanRequest, wait_s: float | None = None) -> None:
    """Register the fitted activation terms of ``req``'s model and settings (see the module docstring).

    ``wait_s``: how long to wait for the fit, whether this call starts it or another one already runs it (None:
    ``generic_peak_fit_wait_s`` for the call that starts it, no wait otherwise)."""
    cfg = request_config(req)
    if not isinstance(cfg, dict) or uses_rules(cfg) or not isinstance(cfg.get("model_type"), str):
        return
    hw = req.hardware
    settings_ = get_settings()
    if (req.transformers_version != "5.24" or not settings_.generic_peak_fit or is_litgpt(req)
            or (hw.num_gpus > 1 and hw.sharding not in ("none", "ddp"))):  # the fit would not be used
        return
    job = config_key(cfg), fit_key(req), length_bucket(req)
    if registered_fit(*job) is not None:
        return
    with _RUNNING_LOCK:
        done = _RUNNING.get(job)
        starts = done is None
        if done is None:
            done = _RUNNING[job] = threading.Event()
            threading.Thread(target=_fit, args=(job, cfg, req.model_dump_json(), done), name="peak-fit",
                             daemon=True).start()
    if wait_s is None:
        wait_s = settings_.generic_peak_fit_wait_s if starts else 0
    done.wait(wait_s)


def _fit(job: tuple[str, str, int], cfg: dict, request_json: str, done: threading.Event) -> None:
    """Load or make the fit of ``job`` (config key, settings, length bucket) and register it (background)."""
    key, settings, bucket = job
    try:
        with LOCK:
            stored = store().load_fits(key, settings)  # every length bucket of these settings, for the nearest one
            for other, other_data in stored.items():
                _register(key, settings, other, other_data)
            data = stored.get(bucket)
            if data is None:
                from app.models.peak_traces import fit_peak

                BUILDS["fits"] += 1
                try:
                    settings_ = get_settings()
                    data = run_in_worker(fit_peak, cfg, request_json, settings_.generic_max_modules,
                                         timeout_s=settings_.generic_peak_fit_timeout_s)
                except PlanError as exc:  # timed out or the worker died: analytic and provisional, with the reason
                    data = {"error": exc.message}
                store().save_fit(key, settings, bucket, data)
                _register(key, settings, bucket, data)
    except Exception:  # the store is unavailable: no fit registered, a later request starts it again
        log.exception("peak fit of %s failed", key[:12])
    finally:
        with _RUNNING_LOCK:
            _RUNNING.pop(job, None)
        done.set()
