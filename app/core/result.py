"""The planner's answer (POST /api/v1/estimate's response). All memory figures are integer bytes per GPU."""

from __future__ import annotations

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
    activations: int = Field(description="everything else alive at the peak: activations, temporaries, cuBLAS "
                             "workspaces (peak minus weights, constants, adapters, optimizer states and the "
                             "gradients alive then)")
    peak: int = Field(description="predicted torch.cuda.max_memory_allocated() of a steady training step")
    overhead: int = Field(description="CUDA context + allocator reserve beyond allocated bytes")
    total: int = Field(description="what the card must hold: peak + overhead")


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
    assumptions: list[str]
    versions: dict[str, str]
    calibration: CalibrationRef | None = Field(
        None, description="set when finished GPU calibrations of this GPU fitted the overhead and error bars")
