"""Service settings (environment variables prefixed ``PEFT_PLANNER_``), read once via :func:`get_settings`."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PEFT_PLANNER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(1_048_576, description="largest accepted request body (a pasted config.json)")
    database_path: Path = Field(Path("var/peft-planner.sqlite3"), description="SQLite file for calibration jobs")
    database_url: str | None = Field(None, description="postgresql://… : the shared job store of API replicas and "
                                     "workers (docs/deployment.md); unset = the SQLite file + in-process worker")
    worker_lease_s: float = Field(15.0, gt=0, description="a running job's lease; workers heartbeat every third")
    worker_max_attempts: int = Field(2, ge=1, description="runs of a job whose worker died before it is interrupted")
    worker_in_api: bool = Field(False, description="with database_url: the API process also runs a worker")
    token: str | None = Field(None, description="bearer token that enables /calibrate (GPU work); unset = disabled")
    generic_cache_path: Path = Field(Path("var/generic-models.sqlite3"),
                                     description="SQLite store of inventories built from the real libraries")
    generic_timeout_s: float = Field(300.0, gt=0, description="per-build wall-clock limit; the worker is killed")
    generic_max_modules: int = Field(200_000, description="largest model (named_modules) the generic path builds")
    generic_peak_fit: bool = Field(True, description="fit a generic model's activations from traces of small "
                                   "variants on its first request per setting (docs/generic-models.md); off: "
                                   "the rules' formulas, flagged provisional")
    generic_peak_fit_timeout_s: float = Field(900.0, gt=0, description="per-fit wall-clock limit (8-16 traces); "
                                              "the worker is killed and the peak stays provisional")
    generic_peak_fit_wait_s: float = Field(15.0, ge=0, description="how long the request that starts a peak fit "
                                           "waits for it; past that it is answered with the provisional peak and "
                                           "the fit finishes in the background for later requests")
    trace_timeout_s: float = Field(120.0, gt=0, description="per-trace limit (s), counted after the worker has "
                                   "imported torch/transformers/PEFT")
    trace_import_timeout_s: float = Field(300.0, gt=0, description="limit (s) for a new trace worker's imports")
    trace_concurrency: int = Field(1, ge=1, description="trace worker processes")
    trace_queue: int = Field(2, ge=0, description="traces that may wait for a worker; more get 429")
    trace_on_workers: Literal["never", "busy", "always"] = Field(
        "busy", description="with database_url: traces run on the fleet's cpu worker slots when the API's own "
        "trace workers are all busy (busy), always, or never (docs/deployment.md)")
    trace_fleet_queue: int = Field(16, ge=0, description="with database_url: traces that may wait in the shared "
                                   "queue for a worker; more get 429")
    trace_fleet_wait_s: float = Field(60.0, gt=0, description="with database_url: how long a queued trace waits for "
                                      "a worker to take it; then it is cancelled (503)")
    estimate_workers: int = Field(4, ge=1, description="estimates and page renders computed at once (threads); "
                                  "answers from the response cache do not count")
    estimate_queue: int = Field(64, ge=0, description="estimates/page renders that may wait; more get 429")
    fit_workers: int = Field(2, ge=1, description="POST/GET /api/v1/fit searches running at once (threads)")
    fit_queue: int = Field(8, ge=0, description="fit requests that may wait; more get 429")
    fit_timeout_s: float = Field(60.0, gt=0, description="per-fit limit (s); past it the search stops with 504")
    model_dirs: str = Field("", description="directories (os.pathsep-separated) under which calibration's "
                            "model_dir may point; empty: model_dir is refused")
    calibration_timeout_s: float = Field(1800.0, gt=0, description="per-job wall-clock limit; the worker is killed")
    calibration_cpu_max_params: int = Field(50_000_000, description="largest model (base parameters) on cpu")
    calibration_cpu_max_tokens: int = Field(4096, description="largest micro_batch_size·seq_len on cpu")
    calibration_cuda_max_tokens: int = Field(1_048_576, description="largest micro_batch_size·seq_len on a GPU")
    hub_timeout_s: float = Field(10.0, gt=0, description="seconds to wait for the Hub (HF_ENDPOINT) per request")
    hub_max_config_bytes: int = Field(262_144, gt=0, description="largest config.json fetched from the Hub")
    hub_cache_size: int = Field(256, ge=0, description="Hub configs kept in process (LRU) on top of HF's disk cache")
    hub_cache_ttl_s: float = Field(3600.0, ge=0, description="seconds before a branch's config is checked again")

    @property
    def allowed_model_dirs(self) -> list[Path]:
        """``model_dirs`` as resolved absolute paths."""
        return [Path(p).resolve() for p in self.model_dirs.split(os.pathsep) if p.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
