"""Service settings (environment variables prefixed ``PEFT_PLANNER_``), read once via :func:`get_settings`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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
    trace_timeout_s: float = 120.0
    trace_concurrency: int = 1
    calibration_timeout_s: float = Field(1800.0, gt=0, description="per-job wall-clock limit; the worker is killed")
    calibration_cpu_max_params: int = Field(50_000_000, description="largest model (base parameters) on cpu")
    calibration_cpu_max_tokens: int = Field(4096, description="largest micro_batch_size·seq_len on cpu")
    calibration_cuda_max_tokens: int = Field(1_048_576, description="largest micro_batch_size·seq_len on a GPU")


@lru_cache
def get_settings() -> Settings:
    return Settings()
