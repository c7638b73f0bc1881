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
    token: str | None = Field(None, description="bearer token that enables /calibrate (GPU work); unset = disabled")
    generic_cache_path: Path = Field(Path("var/generic-models.sqlite3"),
                                     description="SQLite store of inventories built from the real libraries")
    generic_timeout_s: float = Field(300.0, gt=0, description="per-build wall-clock limit; the worker is killed")
    generic_max_modules: int = Field(200_000, description="largest model (named_modules) the generic path builds")
    trace_timeout_s: float = 120.0
    trace_concurrency: int = 1
    calibration_timeout_s: float = Field(1800.0, gt=0, description="per-job wall-clock limit; the worker is killed")
    calibration_cpu_max_params: int = Field(50_000_000, description="largest model (base parameters) on cpu")
    calibration_cpu_max_tokens: int = Field(4096, description="largest micro_batch_size·seq_len on cpu")
    calibration_cuda_max_tokens: int = Field(1_048_576, description="largest micro_batch_size·seq_len on a GPU")
    hub_timeout_s: float = Field(10.0, gt=0, description="seconds to wait for the Hub (HF_ENDPOINT) per request")
    hub_max_config_bytes: int = Field(262_144, gt=0, description="largest config.json fetched from the Hub")
    hub_cache_size: int = Field(256, ge=0, description="Hub configs kept in process (LRU) on top of HF's disk cache")
    hub_cache_ttl_s: float = Field(3600.0, ge=0, description="seconds before a branch's config is checked again")


@lru_cache
def get_settings() -> Settings:
    return Settings()
