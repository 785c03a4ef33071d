"""ONNX Runtime for one model step: execution-provider planning with CPU fallback, threads, instances, warm-up.

One code path serves onnxruntime and onnxruntime-gpu: `plan_providers` asks only for providers that the
installed build offers, and the log names the provider that really runs.

Threads: ``intraOpThreads: 0`` gives each of the ``instances`` sessions ``budget // instances`` threads, where the
budget is the step's CPUs (`cpus.cpu_budget`: quota, ``resources.cpu``, affinity), never the node's core count.
GPUs: with ``resources.gpu: N``, instance ``i`` runs on device ``i % N`` (ids as CUDA_VISIBLE_DEVICES shows them).

Adaptive threads (``model.adaptiveThreads``, CPU only): instances split the budget so that under load batches compute
side by side, but then a lone request at low load would run on a fraction of the cores. So one more session with the
whole budget computes the batches that run alone (`run_alone`; the batcher decides, see `Batcher`). That session's
threads spin while it runs (and stop when the run returns): an idle vCPU of a VM can take ~0.1 ms to wake, and
without spinning its thread sleeps and is woken between the model's ops, dozens of times per run.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from ..arrays import shape_text
from ..errors import ModelLoadError
from ..ops import TensorSpec
from ..protocol import DATATYPES
from ..spec import ModelSpec
from .cpus import CpuBudget, step_cpu_budget
from .gpu_options import (
    BatchRange,
    cuda_memory_options,
    model_input_shapes,
    tensorrt_cache_dir,
    tensorrt_memory_options,
    tensorrt_profile_options,
)

__all__ = [
    "ORT_DATATYPES",
    "ModelSession",
    "ProviderPlan",
    "plan_devices",
    "plan_memory_limits",
    "plan_precision",
    "plan_providers",
    "plan_threads",
    "plan_wide_threads",
]

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

#: ONNX Runtime's type strings -> Open Inference Protocol datatypes.
ORT_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

ProviderPlan = list[tuple[str, dict[str, Any]]]


def plan_providers(
    model: ModelSpec,
    available: Sequence[str],
    *,
    cache_dir: Path | None = None,
    device_id: int = 0,
    profile: dict[str, str] | None = None,
    memory_limit: int | None = None,
) -> ProviderPlan:
    """Execution providers to ask for, best first, always ending with CPU; skips those not `available`.

    ``tensorrt`` asks for TensorRT, then CUDA, then CPU; ``cuda`` asks for CUDA then CPU, both on GPU `device_id`.
    fp16 on TensorRT is TensorRT's own option; on CUDA the model is converted instead (see `plan_precision`).
    `profile`: TensorRT optimization-profile options (`gpu_options.tensorrt_profile_options`); `memory_limit`: bytes
    of GPU memory this session may take (the CUDA arena's cap, TensorRT's workspace).
    """
    plan: ProviderPlan = []
    if model.device == "tensorrt" and TENSORRT in available:
        options: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": model.precision == "fp16"}
        if cache_dir is not None:
            options.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=str(cache_dir),
                trt_timing_cache_enable=True,
                trt_timing_cache_path=str(cache_dir),
            )
        options.update(profile or {})
        options.update(tensorrt_memory_options(memory_limit))
        plan.append((TENSORRT, options))
    if model.device in ("cuda", "tensorrt") and CUDA in available:
        plan.append((CUDA, {"device_id": device_id, **cuda_memory_options(memory_limit)}))
    plan.append((CPU, {}))
    return plan


def plan_memory_limits(devices: Sequence[int], gpu_memory: int | None) -> list[int | None]:
    """Each instance's share of the replica's GPU memory: the instances on one GPU split it evenly."""
    if gpu_memory is None:
        return [None] * len(devices)
    return [gpu_memory // devices.count(d) for d in devices]


def plan_devices(instances: int, gpus: int) -> list[int]:
    """The GPU of each instance: ``i % gpus`` (all on GPU 0 with one GPU or none)."""
    return [i % gpus if gpus > 1 else 0 for i in range(instances)]


def plan_precision(model: ModelSpec, provider: str) -> str:
    """How the model runs given the provider really used: ``fp32``, ``fp16-tensorrt`` or ``fp16-convert``.

    fp16 applies on GPU only; on CPU it would be slower, so the step runs fp32 and says so.
    """
    if model.precision != "fp16":
        return "fp32"
    if provider == TENSORRT:
        return "fp16-tensorrt"
    if provider == CUDA:
        return "fp16-convert"
    return "fp32"


def plan_threads(model: ModelSpec, cpus: int) -> tuple[int, int]:
    """(intra-op, inter-op) threads per session: explicit settings win, else the `cpus` budget split over instances.

    Inter-op 0 leaves ONNX Runtime's default (sessions run sequentially, so that pool stays idle).
    """
    intra = model.intraOpThreads or max(1, cpus // model.instances)
    return intra, model.interOpThreads


def plan_wide_threads(model: ModelSpec, cpus: int, provider: str) -> int | None:
    """Intra-op threads of the session that takes lone batches (the whole budget), or None when there is none: off,
    not on CPU, threads set explicitly, or every instance already has the whole budget."""
    if not model.adaptiveThreads or provider != CPU or model.intraOpThreads or model.instances < 2:
        return None
    intra, _ = plan_threads(model, cpus)
    return cpus if cpus > intra else None


@dataclass(frozen=True)
class _Input:
    name: str
    datatype: str
    shape: tuple[int | str | None, ...]


class ModelSession:
    """`instances` ONNX Runtime sessions of one model; `run` is thread-safe and uses a free instance."""

    def __init__(
        self,
        path: Path,
        model: ModelSpec,
        *,
        available: Sequence[str] | None = None,
        cpus: CpuBudget | None = None,
        gpus: int = 0,
        batch: BatchRange | None = None,
        gpu_memory: int | None = None,
        trt_cache: Path | None = None,
        spin: bool = False,
    ) -> None:
        """`cpus`: the step's CPU budget (default: this process's); `gpus`: the step's ``resources.gpu``;
        `batch`: the batch sizes the step sends (TensorRT's profile); `gpu_memory`: bytes of GPU memory per replica
        (``resources.gpuMemory``); `trt_cache`: TensorRT's engine cache (default `gpu_options.tensorrt_cache_dir`);
        `spin`: the instances' threads spin while they run, like the lone-batch session's (for a caller that runs
        one batch at a time with nothing else on its cores, such as the benchmarks' in-process baseline)."""
        self.path = path
        self.model = model
        available = list(ort.get_available_providers() if available is None else available)
        devices = plan_devices(model.instances, gpus)
        profile = self._tensorrt_profile(batch) if model.device == "tensorrt" and TENSORRT in available else None
        cache_dir = (trt_cache or tensorrt_cache_dir()) if profile is not None else None
        #: The providers and options each instance asks for (ONNX Runtime drops those this build lacks).
        self.plans = [
            plan_providers(model, available, cache_dir=cache_dir, device_id=d, profile=profile, memory_limit=limit)
            for d, limit in zip(devices, plan_memory_limits(devices, gpu_memory))
        ]
        wanted = self.plans[0]
        if model.device != "cpu" and wanted[0][0] == CPU:
            log.warning(
                "model %s asks for device %r but this onnxruntime build offers only %s; running on CPU",
                path.name,
                model.device,
                ", ".join(available),
            )
        cpus = step_cpu_budget(None) if cpus is None else cpus
        intra, inter = plan_threads(model, cpus.cpus)
        options = _session_options(intra, inter, spin=spin)
        self._sessions: queue.SimpleQueue[ort.InferenceSession] = queue.SimpleQueue()
        source: str | bytes = str(path)
        # fp16 on CUDA: convert before the first session, so no fp32 copy of the model is ever put on the GPU
        if plan_precision(model, wanted[0][0]) == "fp16-convert":
            source = _to_fp16(path) or source
        first = self._open(source, options, wanted)
        self.provider = str(first.get_providers()[0])
        self.precision = plan_precision(model, self.provider)
        if self.precision == "fp16-convert" and isinstance(source, str):
            self.precision = "fp32"  # no converter installed (`_to_fp16` said so)
        elif isinstance(source, bytes) and self.precision != "fp16-convert":
            # CUDA was asked for but did not start (no device?): run the original fp32 model where it runs
            log.warning("model %s: CUDA did not start, so fp16 is off; running fp32 on %s", path.name, self.provider)
            source = str(path)
            first = self._open(source, options, wanted)
        elif model.precision == "fp16" and self.precision == "fp32":
            log.warning("model %s: precision fp16 applies on GPU only; running fp32 on %s", path.name, self.provider)
        self._sessions.put(first)
        for plan in self.plans[1:]:
            self._sessions.put(self._open(source, options, plan))
        self.instances = model.instances
        self.threads = intra
        #: Intra-op threads of the session for lone batches (None: none, every batch runs on an instance).
        self.wide_threads = plan_wide_threads(model, cpus.cpus, self.provider)
        self._wide: ort.InferenceSession | None = None
        if self.wide_threads is not None:
            try:
                self._wide = self._open(source, _session_options(self.wide_threads, inter, spin=True), wanted)
            except ModelLoadError as exc:  # e.g. no memory for one more copy: the instances still serve everything
                log.warning("model %s: no session for lone batches (%s); every batch runs on an instance", path.name, exc)
                self.wide_threads = None
        self._inputs = [
            _Input(i.name, _datatype(i.type, path, i.name), tuple(i.shape)) for i in first.get_inputs()
        ]
        self.inputs = [TensorSpec(i.name, i.datatype, tuple(_dim(d) for d in i.shape)) for i in self._inputs]
        self.outputs = [
            TensorSpec(o.name, _datatype(o.type, path, o.name), tuple(_dim(d) for d in o.shape)) for o in first.get_outputs()
        ]
        self._output_names = [o.name for o in self.outputs]
        why = (
            "model.intraOpThreads"
            if model.intraOpThreads
            else f"CPU budget {cpus.cpus} from {cpus.reason}, split over {model.instances} instance(s)"
        )
        log.info(
            "model %s: %d instance(s) on %s (%s), intra-op threads %d per instance (%s)",
            path.name,
            self.instances,
            self.provider,
            self.precision,
            intra,
            why,
        )
        if self.wide_threads is not None:
            log.info(
                "model %s: a batch that runs alone (nothing else computing or queued) runs on one more session with %d "
                "intra-op threads, spinning while it runs (model.adaptiveThreads; one more copy of the model in memory)",
                path.name,
                self.wide_threads,
            )
        if wanted[0][0] != CPU:
            self._log_gpus(devices, gpus)

    def _tensorrt_profile(self, batch: BatchRange | None) -> dict[str, str]:
        """One optimization profile over the step's batch range, or none (logged: TensorRT then builds an engine
        for each new shape it meets, at request time)."""
        try:
            inputs = model_input_shapes(self.path)
        except Exception as exc:  # onnx raises its own for unreadable files; the session's load says it better
            log.warning("model %s: cannot read its inputs for a TensorRT profile: %s", self.path.name, exc)
            return {}
        profile, why_not = tensorrt_profile_options(inputs, batch)
        if profile:
            log.info("model %s: TensorRT profile %s", self.path.name, profile)
        else:
            log.warning("model %s: no TensorRT optimization profile: %s", self.path.name, why_not)
        return profile

    def _log_gpus(self, devices: list[int], gpus: int) -> None:
        if gpus <= 1:
            return
        counts = {d: devices.count(d) for d in sorted(set(devices))}
        spread = ", ".join(f"GPU {d}: {n}" for d, n in counts.items())
        log.info("model %s: %d instance(s) over %d GPU(s): %s", self.path.name, len(devices), gpus, spread)
        idle = [d for d in range(gpus) if d not in counts]
        if idle:
            log.warning(
                "model %s: GPUs %s of %d stay idle: set model.instances to %d or more to use them",
                self.path.name,
                ", ".join(map(str, idle)),
                gpus,
                gpus,
            )

    @staticmethod
    def _open(source: str | bytes, options: ort.SessionOptions, wanted: ProviderPlan) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(
                source, sess_options=options, providers=[name for name, _ in wanted], provider_options=[o for _, o in wanted]
            )
        except Exception as exc:  # onnxruntime raises its own (Fail, InvalidGraph, NoSuchFile, ...)
            raise ModelLoadError(f"ONNX Runtime cannot load the model: {exc}") from exc

    @property
    def fixed_batch(self) -> int | None:
        """The batch size fixed in the model's inputs, or None when the batch dimension is dynamic."""
        sizes = {i.shape[0] for i in self._inputs if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0}
        return sizes.pop() if len(sizes) == 1 else None

    def check_batching(self, max_batch_size: int) -> None:
        """Raise `ModelLoadError` when the step's batching clashes with the model's batch dimension."""
        for spec in self._inputs:
            if not spec.shape:
                if max_batch_size:
                    raise ModelLoadError(
                        f"model input {spec.name!r} is a scalar, so it has no batch dimension; "
                        "set batching.maxBatchSize: 0 for this step"
                    )
                continue
            first = spec.shape[0]
            if isinstance(first, int) and first > 0 and max_batch_size:
                raise ModelLoadError(
                    f"model input {spec.name!r} has a fixed batch dimension of {first} (shape {shape_text(spec.shape)}) "
                    f"but batching.maxBatchSize is {max_batch_size}; set batching.maxBatchSize: 0 for this step, "
                    "or export the model with a dynamic batch dimension"
                )

    def run(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Run one batch on a free instance (call from a worker thread; releases the GIL while computing)."""
        session = self._sessions.get()
        try:
            results = session.run(self._output_names, batch)
        finally:
            self._sessions.put(session)
        return dict(zip(self._output_names, results))

    def run_alone(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Run a batch that nothing else computes beside, on the session with the whole CPU budget (`wide_threads`;
        an instance when there is none). The caller keeps other batches from starting meanwhile."""
        if self._wide is None:
            return self.run(batch)
        return dict(zip(self._output_names, self._wide.run(self._output_names, batch)))

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        """Run random data through every instance at each batch size (dims other than the batch must be fixed)."""
        if any(not isinstance(d, int) or d < 1 for i in self._inputs for d in i.shape[1:]):
            log.info("model %s has dynamic non-batch dimensions; skipping warm-up", self.path.name)
            return
        rng = np.random.default_rng(0)
        started = time.monotonic()
        sessions = [self._sessions.get() for _ in range(self.instances)]
        try:
            for size in batch_sizes:
                feed = {i.name: _random(rng, i, size) for i in self._inputs}
                for session in [*sessions, *([self._wide] if self._wide is not None else [])]:
                    session.run(self._output_names, feed)
        finally:
            for session in sessions:
                self._sessions.put(session)
        sizes = list(batch_sizes)
        shown = f"{sizes[0]}..{sizes[-1]} ({len(sizes)} sizes)" if len(sizes) > 8 else str(sizes)
        log.info("model %s warmed up at batch sizes %s in %.1fs", self.path.name, shown, time.monotonic() - started)


def _session_options(intra: int, inter: int, *, spin: bool = False) -> ort.SessionOptions:
    """Options of a session of a step: its threads, full graph optimization, and spinning only with `spin`.

    ORT's pool threads spin by default, also between runs; in a server they would steal the cores that gRPC and the
    batcher need to prepare the next batch (measured: ~15% of a 2-core step's throughput), so a step's instances never
    spin. A session that computes alone (`spin`) spins during its runs only: ``session.force_spinning_stop`` stops the
    threads when the run returns.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = inter
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if spin:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def _random(rng: np.random.Generator, spec: _Input, rows: int) -> npt.NDArray[Any]:
    shape = (rows, *(int(d) for d in spec.shape[1:] if isinstance(d, int)))
    dtype = DATATYPES[spec.datatype]
    if dtype.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def _datatype(ort_type: str, path: Path, name: str) -> str:
    try:
        return ORT_DATATYPES[ort_type]
    except KeyError:
        raise ModelLoadError(f"model {path.name}: tensor {name!r} has type {ort_type}, which steps cannot serve") from None


def _dim(dim: int | str | None) -> int:
    return dim if isinstance(dim, int) and dim > 0 else -1


def _to_fp16(path: Path) -> bytes | None:
    """The model with float16 weights and float32 inputs/outputs, or None when the converter is missing."""
    try:
        import onnx
        from onnxconverter_common import float16  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        log.warning("precision fp16 on CUDA needs onnxconverter-common (pip install onnxconverter-common); running fp32")
        return None
    converted = float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    return bytes(converted.SerializeToString())
