"""The op loop: one step's request path: validate, preprocess, batch, process, postprocess (or skip process).

The same loop runs an ONNX model (process = ONNX Runtime) and any op. Plain hooks run on worker threads, or on the
event loop once they have proven shorter than a thread hop (`HookRunner`); a model's `process` always on its threads.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..arrays import Arrays, shared_rows
from ..errors import DeadlineExceeded, FieldError, InvalidManifest, InvalidRequest, ModelLoadError, RequestError, StepFailed
from ..ops import Op, OpContext, RequestContext, Skip, TensorSpec, load_op
from ..protocol import decode_tensors, encode_tensors, pb
from ..sources import localize_config
from ..spec import BatchingSpec, StepSpec
from .batcher import Batcher, OnFailure
from .cpus import CpuBudget, step_cpu_budget
from .hook_runner import HookRunner
from .inputs import validate_inputs
from .metrics import StepMetrics
from .model_file import ensure_model
from .model_op import ModelOp

__all__ = ["OpLoop", "ignored_batching", "load_step_op", "warm_up_sizes"]

log = logging.getLogger(__name__)

_BATCHING_DEFAULTS = BatchingSpec()
#: Settings that only a batching op uses; the queue (`maxQueueSize`, `maxConcurrentBatches`) serves any `process`.
_BATCH_ONLY = ("maxBatchSize", "maxQueueDelayMicroseconds", "preferredBatchSizes", "policy")


def load_step_op(spec: StepSpec, base_dir: Path, *, cpus: CpuBudget | None = None, spin: bool = False) -> Op:
    """Build the step's op: the ONNX model (fetched or built first if missing) or the op class with its config.

    `spin`: a model's threads spin while it runs (see `ModelSession`); a served step leaves it off."""
    if spec.model is not None:
        path = ensure_model(spec.model, base_dir)
        return ModelOp(
            path,
            spec.model,
            spec.batching,
            cpus=cpus,
            gpus=spec.resources.gpu,
            gpu_memory=spec.resources.gpuMemory,
            spin=spin,
        )
    assert spec.op is not None
    try:
        cls = load_op(spec.op)
        op = cls()
        # Remote URIs among the config's values (label files, ...) are fetched first: the op gets local paths.
        op.init(localize_config(spec.config), OpContext(step=spec.name, base_dir=base_dir))
    except ValueError as exc:
        raise ModelLoadError(f"step {spec.name!r}: op {spec.op!r}: {exc}") from exc
    return op


def ignored_batching(spec: StepSpec, op: Op | type[Op]) -> list[FieldError]:
    """The step's batching settings (paths ``batching.<field>``) that its op would silently ignore.

    An op without `process` has no queue and no batches, so every setting is moot; one with ``batched = False``
    computes each request alone behind a real queue. ``maxBatchSize: 0`` (never batch) is always allowed.
    """
    cls = op if isinstance(op, type) else type(op)
    if cls.process is not Op.process and cls.batched:
        return []
    name = spec.op or cls.__name__
    if cls.process is Op.process:
        fields = list(BatchingSpec.model_fields)
        why = f"op {name!r} has no batch step (no `process`), so no request is queued or batched"
    else:
        fields = list(_BATCH_ONLY)
        why = f"op {name!r} computes each request alone (batched = False)"
    errors = []
    for field in fields:
        value = getattr(spec.batching, field)
        if value == getattr(_BATCHING_DEFAULTS, field) or (field == "maxBatchSize" and value == 0):
            continue
        errors.append(FieldError(f"batching.{field}", f"{why}; this setting would be ignored: remove it, got {value!r}"))
    return errors


#: Providers whose first run at each new batch size is slow: ONNX Runtime's CUDA provider spent 0.16-0.88 s on the first
#: ResNet-50 batch of each size on an H100 (cuDNN's algorithm search, memory planning) against 2.3-8.1 ms after.
_GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})
#: Every batch size up to this is warmed up on a GPU; above it, powers of two and the preferred sizes.
_GPU_WARM_ALL_UP_TO = 64


def warm_up_sizes(batching: BatchingSpec, provider: str) -> list[int]:
    """Batch sizes to run before the step reports ready: on a GPU each size the batcher can form (a work-conserving
    batch may have any size up to `maxBatchSize`), so that no request pays a shape's first run; on CPU, where a new
    shape costs little, 1 and the preferred sizes."""
    if not batching.maxBatchSize:
        return [1]
    if provider not in _GPU_PROVIDERS:
        return sorted({1, *batching.preferredBatchSizes})
    largest = batching.maxBatchSize
    powers = {2**k for k in range(largest.bit_length()) if 2**k <= largest}
    return sorted({*range(1, min(largest, _GPU_WARM_ALL_UP_TO) + 1), *powers, *batching.preferredBatchSizes, largest})


def _warn_unused_delay(spec: StepSpec) -> None:
    """A queue delay set away from its default does nothing under work-conserving batching: say so at start."""
    delay = spec.batching.maxQueueDelayMicroseconds
    if spec.batching.policy == "workConserving" and delay != _BATCHING_DEFAULTS.maxQueueDelayMicroseconds:
        log.warning(
            "step %s: batching.maxQueueDelayMicroseconds (%d) is not used with batching.policy workConserving; "
            "set policy: fill to wait for fuller batches, or remove it",
            spec.name,
            delay,
        )


def _parameters(request: pb.ModelInferRequest) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in request.parameters.items():
        which = value.WhichOneof("parameter_choice")
        result[key] = getattr(value, which) if which else None
    return result


def _overrides(op: Op, hook: str) -> bool:
    return getattr(type(op), hook) is not getattr(Op, hook)


class OpLoop:
    """A loaded step: its op, batcher and worker threads. Create with `OpLoop.load`, then `start`, `infer`, `aclose`."""

    def __init__(self, spec: StepSpec, op: Op, metrics: StepMetrics, *, cpus: CpuBudget | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.op = op
        self.metrics = metrics
        self.cpus = step_cpu_budget(spec.resources.cpu) if cpus is None else cpus
        instances = spec.model.instances if spec.model is not None else 1
        self.concurrency = spec.batching.maxConcurrentBatches or instances
        self._has_pre = _overrides(op, "preprocess")
        self._has_post = _overrides(op, "postprocess")
        self._hooks_async = {
            hook: inspect.iscoroutinefunction(getattr(op, hook)) for hook in ("preprocess", "process", "postprocess")
        }
        self._compute_pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"{self.name}-compute")
        #: a plain `process` as short as a top-k computes on the event loop, not on a compute thread (see `HookRunner`);
        #: a model's never does (ONNX Runtime takes far longer and releases the GIL, so it keeps its threads)
        self._process_runner = HookRunner(self._compute_pool) if not isinstance(op, ModelOp) else None
        #: Threads for plain pre/postprocess hooks: the CPU budget, at least 2 so that pre and post can overlap.
        self.hook_threads = max(2, self.cpus.cpus)
        self._hook_pool = (
            ThreadPoolExecutor(self.hook_threads, thread_name_prefix=f"{self.name}-hooks")
            if self._has_pre or self._has_post
            else None
        )
        #: short plain hooks run on the event loop instead of a thread (see `HookRunner`)
        self._hook_runners = (
            {hook: HookRunner(self._hook_pool) for hook in ("preprocess", "postprocess")} if self._hook_pool is not None else {}
        )
        self.batcher: Batcher | None = None
        if _overrides(op, "process"):
            batched = op.batched and spec.batching.maxBatchSize > 0
            self.batcher = Batcher(
                self._process,
                name=self.name,
                max_batch_size=spec.batching.maxBatchSize if batched else 0,
                max_queue_delay_s=spec.batching.maxQueueDelayMicroseconds / 1e6,
                preferred_batch_sizes=spec.batching.preferredBatchSizes if batched else (),
                max_queue_size=spec.batching.maxQueueSize,
                concurrency=self.concurrency,
                policy=spec.batching.policy,
                metrics=metrics,
                process_alone=self._process_alone if isinstance(op, ModelOp) and op.alone_threads else None,
            )
        self._output_names = {o.name for o in op.outputs}

    @classmethod
    def load(cls, spec: StepSpec, base_dir: Path, metrics: StepMetrics, *, where: str = "step") -> OpLoop:
        """Load the op or model and warm it up (blocking: call from a thread).

        Raises `InvalidManifest` naming ``<where>.batching.<field>`` for batching settings the op cannot use.
        """
        if spec.op is not None:
            try:
                op_class = load_op(spec.op)
            except ValueError as exc:
                raise ModelLoadError(f"step {spec.name!r}: op {spec.op!r}: {exc}") from exc
            ignored = ignored_batching(spec, op_class)
            if ignored:
                raise InvalidManifest([FieldError(f"{where}.{e.path}", e.message) for e in ignored])
        _warn_unused_delay(spec)
        cpus = step_cpu_budget(spec.resources.cpu)
        log.info("step %s: sizing threads for %d CPU(s): %s", spec.name, cpus.cpus, cpus.reason)
        op = load_step_op(spec, base_dir, cpus=cpus)
        step = cls(spec, op, metrics, cpus=cpus)
        op.warm_up(warm_up_sizes(spec.batching, op.provider))
        return step

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.op.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.op.outputs

    @property
    def provider(self) -> str:
        return self.op.provider

    @property
    def busy(self) -> bool:
        return self.batcher is not None and self.batcher.busy

    async def start(self, on_failure: OnFailure | None = None) -> None:
        """Start the batcher; `on_failure` hears if it dies (the step can then compute nothing)."""
        if self.batcher is not None:
            await self.batcher.start(on_failure)

    async def aclose(self) -> None:
        if self.batcher is not None:
            await self.batcher.aclose()
        self._compute_pool.shutdown(wait=False, cancel_futures=True)
        if self._hook_pool is not None:
            self._hook_pool.shutdown(wait=False, cancel_futures=True)
        self.op.close()

    async def infer(self, request: pb.ModelInferRequest, *, deadline: float | None = None) -> pb.ModelInferResponse:
        """Answer one ModelInferRequest; raises RequestError (with its status) when the request fails."""
        outputs = await self.infer_arrays(request, deadline=deadline)
        response = pb.ModelInferResponse(model_name=self.name, id=request.id)
        encode_tensors(response, outputs.items())
        return response

    async def infer_arrays(self, request: pb.ModelInferRequest, *, deadline: float | None = None) -> Arrays:
        """`infer`'s outputs (those the request asks for, else all) before they are encoded."""
        if self.batcher is not None:
            self.batcher.refuse_if_full()
        decoded = decode_tensors(request)
        requested = [o.name for o in request.outputs]
        if self._output_names:
            for name in requested:
                if name not in self._output_names:
                    raise InvalidRequest(
                        f"unknown output {name!r} requested; step {self.name!r} has {', '.join(sorted(self._output_names))}"
                    )
        outputs = await self._compute(decoded, RequestContext(id=request.id, parameters=_parameters(request)), deadline)
        if not requested:
            return dict(outputs)
        missing = [n for n in requested if n not in outputs]
        if missing:
            raise InvalidRequest(f"step {self.name!r} did not produce requested output(s) {missing}")
        return {name: outputs[name] for name in requested}

    async def run(self, inputs: Arrays, *, request_id: str, deadline: float | None = None) -> Arrays:
        """One request's outputs from tensors handed over in memory (an in-process edge: nothing to decode)."""
        if self.batcher is not None:
            self.batcher.refuse_if_full()
        return dict(await self._compute(inputs, RequestContext(id=request_id, parameters={}), deadline))

    async def _compute(self, decoded: Arrays, context: RequestContext, deadline: float | None) -> Arrays:
        """Validate, preprocess, batch and process (or skip), postprocess."""
        inputs = validate_inputs(self.name, self.op.inputs, decoded, any_name=self.op.any_input_name)
        prepared: Arrays | Skip = inputs
        if self._has_pre:
            prepared = await self._hook("preprocess", self.op.preprocess, inputs, context)
        if isinstance(prepared, Skip):
            outputs = prepared.outputs
        elif self.batcher is not None:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(f"step {self.name!r}: the deadline passed before the request was queued")
            if self.batcher.max_batch_size:
                self._check_rows(prepared)
            outputs = await self.batcher.submit(prepared, deadline=deadline)
        else:
            outputs = prepared
        if self._has_post:
            outputs = await self._hook("postprocess", self.op.postprocess, outputs, context)
        result: Arrays = outputs
        return result

    async def _process(self, batch: Arrays) -> Arrays:
        if self._hooks_async["process"]:
            result: Arrays = await self.op.process(batch)  # type: ignore[misc]
            return result
        if self._process_runner is not None:
            computed: Arrays = await self._process_runner.run(self.op.process, batch)
            return computed
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._compute_pool, self.op.process, batch)

    async def _process_alone(self, batch: Arrays) -> Arrays:
        assert isinstance(self.op, ModelOp)
        return await asyncio.get_running_loop().run_in_executor(self._compute_pool, self.op.process_alone, batch)

    async def _hook(self, hook: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            if self._hooks_async[hook]:
                return await fn(*args)
            return await self._hook_runners[hook].run(fn, *args)
        except RequestError:
            raise
        except Exception:
            log.exception("step %s: %s failed", self.name, hook)
            raise StepFailed(f"step {self.name!r}: {hook} failed; see the step's log") from None

    def _check_rows(self, prepared: Arrays) -> None:
        rows = shared_rows(prepared)
        if rows is None:
            shapes = {name: list(a.shape) for name, a in prepared.items()}
            raise InvalidRequest(
                f"step {self.name!r}: every input needs the same number of rows (first dimension) to batch, got {shapes}"
            )
        if rows == 0:
            raise InvalidRequest(f"step {self.name!r}: the request has 0 rows")
