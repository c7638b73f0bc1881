"""``PYTORCH_CUDA_ALLOC_CONF``: the settings of torch's CUDA caching allocator that change memory use.

Parsed as torch 2.13 parses it (``c10/core/AllocatorConfig.cpp``: ``lexArgs`` splits on ``, : [ ]`` and
drops spaces; ``parseArgs`` reads ``key:value`` pairs separated by commas; an unknown key is an error,
"Unrecognized CachingAllocator option"). Modelled keys and their checks (same file):

- ``max_split_size_mb`` (``parseMaxSplitSize``): integer MiB ≥ 20 (``kLargeBuffer``); default unlimited.
- ``max_non_split_rounding_mb`` (``parseMaxNonSplitRoundingSize``): integer MiB ≥ 20; default 20 MiB.
- ``garbage_collection_threshold`` (``parseGarbageCollectionThreshold``): 0 < value < 1; default off.
- ``roundup_power2_divisions`` (``parseRoundUpPower2Divisions``): a power of two for every size, or a
  list ``[256:1,512:2,>:4]`` of per-interval divisions (intervals are the powers of two from 1 MiB to
  64 GiB, ``kRoundUpPowerOfTwoIntervals`` = 16); default 0 (512-byte rounding only).
- ``expandable_segments`` (``True``/``False``); default False.

Accepted without effect on device memory: ``backend:native``, ``release_lock_on_cudamalloc``,
``pinned_use_cuda_host_register``, ``pinned_num_register_threads``, ``pinned_use_background_threads``
(host-side settings). ``backend:cudaMallocAsync`` hands memory to CUDA's own pool allocator, which this
simulator does not model: refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.units import MiB

K_LARGE_BUFFER = 20 * MiB
"""``kLargeBuffer`` (CUDACachingAllocator.cpp): 1–10 MiB requests are carved from 20 MiB segments."""
ROUNDUP_INTERVALS = 16
"""``kRoundUpPowerOfTwoIntervals`` (AllocatorConfig.cpp): 1 MiB, 2 MiB, …, 32 GiB (last: ≥ 32 GiB)."""
MAX_CONF_CHARS = 512

_MODELLED = ("max_split_size_mb", "max_non_split_rounding_mb", "garbage_collection_threshold",
             "roundup_power2_divisions", "expandable_segments")
_NO_EFFECT_BOOL = ("release_lock_on_cudamalloc", "pinned_use_cuda_host_register", "pinned_use_background_threads")
_NO_EFFECT_INT = ("pinned_num_register_threads",)
KNOWN_KEYS = (*_MODELLED, "backend", *_NO_EFFECT_BOOL, *_NO_EFFECT_INT)


class AllocConfError(ValueError):
    """A ``PYTORCH_CUDA_ALLOC_CONF`` string torch would refuse (or this simulator does not model)."""


@dataclass(frozen=True)
class AllocatorConfig:
    """The caching allocator's settings (bytes), torch's defaults when built with no arguments."""

    max_split_size: int | None = None  # None: unlimited (std::numeric_limits<size_t>::max())
    max_non_split_rounding: int = K_LARGE_BUFFER
    garbage_collection_threshold: float = 0.0
    expandable_segments: bool = False
    roundup_power2_divisions: tuple[int, ...] = (0,) * ROUNDUP_INTERVALS

    def divisions_for(self, size: int) -> int:
        """``AllocatorConfig::roundup_power2_divisions(size)``: the interval of floor(log2(size)), from 1 MiB."""
        index = min(max(size.bit_length() - 1 - 20, 0), ROUNDUP_INTERVALS - 1)
        return self.roundup_power2_divisions[index]


def _lex(text: str) -> list[str]:
    """``AllocatorConfig::lexArgs``: tokens split at ',', ':', '[' and ']' (kept as tokens); spaces dropped."""
    out: list[str] = []
    buf = ""
    for ch in text:
        if ch in ",:[]":
            if buf:
                out.append(buf)
                buf = ""
            out.append(ch)
        elif ch != " ":
            buf += ch
    if buf:
        out.append(buf)
    return out


def _int(token: str, key: str) -> int:
    if not (token.isascii() and token.isdigit()):
        raise AllocConfError(f"{key} expects a non-negative integer, got {token!r}")
    return int(token)


def _power_of_two(value: int, key: str, zero_ok: bool) -> int:
    if (value == 0 and zero_ok) or (value > 0 and value & (value - 1) == 0):
        return value
    raise AllocConfError(f"{key}: the divisions must be a power of 2{' or 0' if zero_ok else ''}, got {value}")


def _divisions(tokens: list[str], i: int) -> tuple[tuple[int, ...], int]:
    """``parseRoundUpPower2Divisions``: one value for all sizes, or ``[interval_mb:div, ..., >:div]``."""
    key = "roundup_power2_divisions"
    if tokens[i] != "[":
        value = _power_of_two(_int(tokens[i], key), key, zero_ok=False)
        return (value,) * ROUNDUP_INTERVALS, i
    divs = [0] * ROUNDUP_INTERVALS
    first, last = True, 0
    i += 1
    while i < len(tokens) and tokens[i] != "]":
        interval = tokens[i]
        if i + 2 >= len(tokens) or tokens[i + 1] != ":":
            raise AllocConfError(f"{key}: expected 'size:divisions' pairs inside [...]")
        value = _power_of_two(_int(tokens[i + 2], key), key, zero_ok=True)
        i += 3
        if interval == ">":
            divs[last:] = [value] * (ROUNDUP_INTERVALS - last)
        else:
            mb = _power_of_two(_int(interval, key), key, zero_ok=False)
            index = min(mb.bit_length() - 1, ROUNDUP_INTERVALS - 1)
            if first:
                divs[:index] = [value] * index
                first = False
            divs[index] = value
            last = index
        if i < len(tokens) and tokens[i] == ",":
            i += 1
    if i >= len(tokens):
        raise AllocConfError(f"{key}: missing ']'")
    return tuple(divs), i


def _bool(token: str, key: str) -> bool:
    if token not in ("True", "False"):
        raise AllocConfError(f"Expected a single True/False argument for {key}, got {token!r}")
    return token == "True"


def parse_alloc_conf(text: str | None) -> AllocatorConfig:
    """An :class:`AllocatorConfig` from ``PYTORCH_CUDA_ALLOC_CONF`` syntax; None or '' → torch's defaults.

    Raises :class:`AllocConfError` with the reason torch would give (unknown key, bad value).
    """
    if not text or not text.strip():
        return AllocatorConfig()
    if len(text) > MAX_CONF_CHARS:
        raise AllocConfError(f"at most {MAX_CONF_CHARS} characters")
    tokens = _lex(text)
    values: dict[str, object] = {}
    i = 0
    while i < len(tokens):
        key = tokens[i]
        if key not in KNOWN_KEYS:
            raise AllocConfError(f"Unrecognized CachingAllocator option: {key!r}; "
                                 f"known options: {', '.join(KNOWN_KEYS)}")
        if i + 2 >= len(tokens) or tokens[i + 1] != ":":
            raise AllocConfError(f"expected '{key}:<value>'")
        i += 2
        value = tokens[i]
        if key in ("max_split_size_mb", "max_non_split_rounding_mb"):
            mb = _int(value, key)
            if mb < K_LARGE_BUFFER // MiB:
                raise AllocConfError(f"CachingAllocator option {key} too small, must be >= {K_LARGE_BUFFER // MiB}")
            values[key] = mb * MiB
        elif key == "garbage_collection_threshold":
            try:
                threshold = float(value)
            except ValueError:
                raise AllocConfError(f"{key} expects a number in (0.0, 1.0), got {value!r}") from None
            if not 0.0 < threshold < 1.0:
                raise AllocConfError("garbage_collection_threshold is invalid, set it in (0.0, 1.0)")
            values[key] = threshold
        elif key == "roundup_power2_divisions":
            values[key], i = _divisions(tokens, i)
        elif key == "expandable_segments":
            values[key] = _bool(value, key)
        elif key == "backend":
            if value != "native":
                raise AllocConfError(f"backend {value!r} is not modelled: the simulator models backend:native "
                                     "(torch's default caching allocator)")
        elif key in _NO_EFFECT_BOOL:
            _bool(value, key)
        else:
            _int(value, key)
        i += 1
        if i < len(tokens):
            if tokens[i] != ",":
                raise AllocConfError(f"expected ',' after {key}'s value, got {tokens[i]!r}")
            i += 1
    return AllocatorConfig(
        max_split_size=values.get("max_split_size_mb"),  # type: ignore[arg-type]
        max_non_split_rounding=values.get("max_non_split_rounding_mb", K_LARGE_BUFFER),  # type: ignore[arg-type]
        garbage_collection_threshold=values.get("garbage_collection_threshold", 0.0),  # type: ignore[arg-type]
        expandable_segments=values.get("expandable_segments", False),  # type: ignore[arg-type]
        roundup_power2_divisions=values.get("roundup_power2_divisions", (0,) * ROUNDUP_INTERVALS),  # type: ignore[arg-type]
    )
