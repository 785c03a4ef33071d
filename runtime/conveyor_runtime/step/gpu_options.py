"""GPU execution-provider options that depend on the model and the step: TensorRT optimization profiles, the
engine cache's place, and per-step GPU memory limits.

Without profiles TensorRT builds an engine for each new input shape it meets, at request time (seconds each); with
one profile spanning the step's batch range, one engine serves every batch size and is built during warm-up.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

__all__ = [
    "TRT_CACHE_ENV",
    "BatchRange",
    "cuda_memory_options",
    "model_input_shapes",
    "parse_bytes",
    "tensorrt_cache_dir",
    "tensorrt_memory_options",
    "tensorrt_profile_options",
]

#: Where TensorRT engines are cached; the operator points it at a volume, so a restarted container reuses them.
TRT_CACHE_ENV = "CONVEYOR_TRT_CACHE"

_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)$")

Shape = tuple[int | str | None, ...]


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes a step's model sees: TensorRT's profile min, opt and max."""

    min: int
    opt: int
    max: int

    @classmethod
    def for_batching(cls, max_batch_size: int, preferred: Sequence[int]) -> BatchRange | None:
        """min 1, opt the largest preferred size (else the max), max `maxBatchSize`; None when batching is off."""
        if max_batch_size < 1:
            return None
        return cls(1, max(preferred) if preferred else max_batch_size, max_batch_size)


def parse_bytes(quantity: str) -> int:
    """A Kubernetes byte quantity (``4Gi``, ``512Mi``, ``1G``, ``1500000``) in bytes."""
    match = _QUANTITY.fullmatch(quantity)
    if match is None:
        raise ValueError(f"{quantity!r} is not a byte quantity like 4Gi, 512Mi or 1G")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit])


def model_input_shapes(path: Path) -> list[tuple[str, Shape]]:
    """The graph inputs' names and shapes (ints, or the symbolic name / None of a dynamic dimension), read from the
    file without its weights, before any session exists."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    shapes: list[tuple[str, Shape]] = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shapes.append((value.name, tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)))
    return shapes


def _profile_shape(shape: Shape, rows: int) -> str | None:
    if not shape:
        return None
    first, rest = shape[0], shape[1:]
    if any(not isinstance(d, int) or d < 1 for d in rest):
        return None  # a dynamic dimension beyond the batch: the profile cannot be derived from the batch range
    batch = first if isinstance(first, int) and first > 0 else rows
    return "x".join(str(d) for d in (batch, *rest))


def tensorrt_profile_options(inputs: Sequence[tuple[str, Shape]], batch: BatchRange | None) -> tuple[dict[str, str], str]:
    """TensorRT EP profile options for `inputs` over `batch`, and why none when they cannot be given.

    ORT's option syntax is ``name:1x3x224x224,other:...``, so a name holding ``:`` or ``,`` cannot be listed.
    """
    if batch is None:
        return {}, "batching is off (maxBatchSize 0): TensorRT builds for the shapes it meets"
    options: dict[str, list[str]] = {"trt_profile_min_shapes": [], "trt_profile_opt_shapes": [], "trt_profile_max_shapes": []}
    for name, shape in inputs:
        if ":" in name or "," in name:
            return {}, f"input {name!r} has ':' or ',' in its name, which TensorRT's profile option cannot carry"
        sizes = {key: _profile_shape(shape, rows) for key, rows in zip(options, (batch.min, batch.opt, batch.max))}
        if any(value is None for value in sizes.values()):
            return {}, f"input {name!r} (shape {shape}) has dynamic dimensions besides the batch"
        for key, value in sizes.items():
            options[key].append(f"{name}:{value}")
    return {key: ",".join(values) for key, values in options.items()}, ""


def tensorrt_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """`$CONVEYOR_TRT_CACHE`, else ``~/.cache/conveyor/tensorrt`` (engine file names carry the model's hash)."""
    environ = dict(os.environ) if environ is None else environ
    configured = environ.get(TRT_CACHE_ENV)
    return Path(configured) if configured else Path(environ.get("HOME", "~")).expanduser() / ".cache/conveyor/tensorrt"


def cuda_memory_options(limit_bytes: int | None) -> dict[str, Any]:
    """CUDA EP options capping its memory arena; growth by what is asked, so the cap is not overshot by doubling."""
    if limit_bytes is None:
        return {}
    return {"gpu_mem_limit": limit_bytes, "arena_extend_strategy": "kSameAsRequested"}


def tensorrt_memory_options(limit_bytes: int | None) -> dict[str, Any]:
    """TensorRT EP options: its builder's workspace stays inside the step's GPU memory share."""
    return {} if limit_bytes is None else {"trt_max_workspace_size": limit_bytes}
