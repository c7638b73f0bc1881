"""The planner's answer (POST /api/v1/estimate's response). All memory figures are integer bytes per GPU."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Parameters(BaseModel):
    total: int = Field(description="base model parameters, tied weights once (model.num_parameters())")
    trainable: int = Field(description="PeftModel.get_nb_trainable_parameters()[0] (all params for full)")
    trainable_percent: float = Field(description="100·trainable / all_params, as PEFT prints it")
    all_params: int = Field(description="PeftModel.get_nb_trainable_parameters()[1]: base + adapter params")
    adapter_params: int = Field(description="parameters PEFT adds (LoRA A/B, DoRA magnitude, modules_to_save)")
    targeted_modules: int = Field(description="modules/parameters that carry an adapter")


class Memory(BaseModel):
    weights: int = Field(description="base weights as stored (packed 4/8-bit data for quantized layers)")
    quantization_constants: int = Field(description="bitsandbytes absmax, nested state, code tables, row scales")
    adapter_weights: int = Field(description="LoRA A/B, DoRA magnitudes (fp32) and modules_to_save copies")
    gradients: int = Field(description="gradients of trainable parameters (their dtype)")
    optimizer_states: int = Field(description="optimizer state in torch's allocator (paged states excluded)")
    paged_optimizer_states: int = Field(
        0, description="paged optimizer state (bitsandbytes paged_* optimizers, tensors with ≥1e5 elements) in CUDA "
        "unified memory, per GPU: on the GPU while it has room, in host RAM otherwise (slow when evicted); "
        "not part of peak or total")
    host_ram: int = Field(
        0, description="host (CPU) RAM the offloaded state needs, all GPUs of the run together (per node when "
        "they share one host): DeepSpeed ZeRO-Offload's fp32 master weights, gradients and optimizer states, "
        "ZeRO-Infinity's / FSDP's offloaded parameters, activation_offloading's saved tensors (docs/switches.md); "
        "not part of peak or total")
    activations: int = Field(description="everything else alive at the peak: activations, temporaries, cuBLAS "
                             "workspaces (peak minus weights, constants, adapters, optimizer states and the "
                             "gradients alive then)")
    peak: int = Field(description="predicted torch.cuda.max_memory_allocated() of a steady training step")
    reserved: int = Field(description="predicted torch.cuda.max_memory_reserved(): peak + the caching "
                          "allocator's reserve (see `allocator`)")
    overhead: int = Field(description="CUDA context (+ NCCL buffers) + allocator reserve beyond allocated bytes")
    total: int = Field(description="what the card must hold, as nvidia-smi shows it: reserved + CUDA context "
                       "(+ NCCL buffers when num_gpus > 1) = peak + overhead")


class BreakdownItem(BaseModel):
    key: str = Field(description="component/group, e.g. 'weights/attention'")
    bytes: int
    params: int | None = None
    dtype: str | None = None
    note: str = ""


class Phase(BaseModel):
    name: str = Field(description="forward | loss | backward | optimizer")
    bytes: int = Field(description="allocated bytes at this phase's high-water mark")
    gradient_bytes: int = Field(0, description="gradient bytes alive at that moment (part of bytes)")


class PeakInfo(BaseModel):
    phase: str
    phases: list[Phase]
    provisional: bool = Field(description="True for terms not yet checked against the trace engine")


class QuantizationReport(BaseModel):
    """The QLoRA paper's constants-per-parameter claim next to this model's exact bitsandbytes bytes."""

    quantized_params: int
    bits_per_param_no_double_quant: float
    bits_per_param_double_quant: float
    constants_bytes_no_double_quant: int
    constants_bytes_double_quant: int
    storage_bytes_4bit: int = Field(description="packed data + constants of every quantized layer")
    seed_claim: str


class AllocatorInfo(BaseModel):
    """The caching allocator's reserve (reserved − allocated) and which rule gave it (app/core/reserved.py)."""

    pytorch_cuda_alloc_conf: str | None = Field(description="the request's PYTORCH_CUDA_ALLOC_CONF (null: default)")
    reserve_bytes: int = Field(description="predicted max_memory_reserved − max_memory_allocated")
    rule: str = Field(description="the rule that applied, with its inputs")
    outside_allocator_bytes: int = Field(description="CUDA context (+ NCCL buffers): in nvidia-smi, not in reserved")
    expandable_segments_reserve_bytes: int = Field(
        description="the reserve with expandable_segments:True added to the request's settings")
    expandable_segments_saves_bytes: int = Field(
        description="reserve_bytes − expandable_segments_reserve_bytes: what expandable_segments:True would save "
        "(0 when the request already sets it)")


class GpuFit(BaseModel):
    gpu: str
    name: str
    vram_bytes: int
    fits: bool
    headroom_bytes: int
    paged_on_gpu: bool | None = Field(
        None, description="with paged optimizer state (memory.paged_optimizer_states > 0): true when the headroom "
        "holds it (it stays on the GPU), false when it pages to host RAM; null without paged state")


class ModelSummary(BaseModel):
    id: str | None
    model_type: str
    num_hidden_layers: int
    hidden_size: int
    vocab_size: int
    num_experts: int


class ModelSource(BaseModel):
    """Where the model's config.json came from (set by ``app/models/resolve.py``, not by the core)."""

    kind: Literal["catalog", "hub", "pasted"]
    hub_id: str | None = Field(None, description="catalog or Hub repo id ('org/name'); None for a pasted config")
    revision: str | None = Field(None, description="the Hub revision asked for (branch, tag or commit)")
    commit_sha: str | None = Field(None, description="the Hub commit the config.json was read at, when known")
    origin: str = Field(description="where the config was read: the catalog file and its recorded source, the Hub "
                        "URL it was downloaded from, huggingface_hub's cache, or the request body")
    notes: list[str] = Field(default_factory=list,
                             description="assumptions the config implies (e.g. an MXFP4/FP8 checkpoint)")


class CalibrationRef(BaseModel):
    """Which stored GPU calibrations shaped this answer (see app/core/calibrated.py)."""

    gpu: str
    used: list[str]
    context_bytes: int
    reserve_fraction: float
    peak_error_low_percent: float
    peak_error_high_percent: float
    peak_low_bytes: int
    peak_high_bytes: int


class EstimateResult(BaseModel):
    model: ModelSummary
    parameters: Parameters
    memory: Memory
    peak: PeakInfo
    breakdown: list[BreakdownItem]
    quantization: QuantizationReport | None
    fits: list[GpuFit]
    allocator: AllocatorInfo
    assumptions: list[str]
    versions: dict[str, str]
    source: ModelSource | None = Field(None, description="where the model's config.json came from")
    calibration: CalibrationRef | None = Field(
        None, description="set when finished GPU calibrations of this GPU fitted the overhead and error bars")
