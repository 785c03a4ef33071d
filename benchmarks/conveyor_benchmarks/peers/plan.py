"""What every peer runs, read from one manifest: a three-step pipeline (op -> ONNX model -> op) mapped onto each
system's settings, so that Conveyor, Ray Serve and PyTriton do the same work with the same batching."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor_runtime.spec import ExecutionPlan, ModelSpec, StepSpec, load_manifest
from conveyor_runtime.step import plan_threads, step_cpu_budget

__all__ = ["OpStep", "PeerPlan", "peer_plan"]


@dataclass(frozen=True)
class OpStep:
    """An op step: its name, op reference, config and replicas."""

    name: str
    op: str
    config: dict[str, Any]
    replicas: int


@dataclass(frozen=True)
class PeerPlan:
    """The pipeline as a peer builds it: preprocess op -> classifier -> postprocess op.

    `instances` model sessions of `intra_threads` threads each (Conveyor's: `instances` sessions in one step; a peer:
    one session per replica or Triton instance), batches of at most `max_batch` rows, `queue_delay_s` to fill one.
    """

    pipeline: str
    manifest: Path
    preprocess: OpStep
    classify: StepSpec
    postprocess: OpStep
    max_batch: int
    queue_delay_s: float
    instances: int
    intra_threads: int
    policy: str

    @property
    def base_dir(self) -> Path:
        return self.manifest.parent

    def replica_model(self) -> ModelSpec:
        """The classifier's model spec for one peer replica: one session, Conveyor's intra-op threads per instance."""
        assert self.classify.model is not None
        return self.classify.model.model_copy(update={"instances": 1, "intraOpThreads": self.intra_threads, "interOpThreads": 0})

    def replica_step(self) -> StepSpec:
        """The classifier step as one peer replica loads it (`conveyor_runtime.step.load_step_op`)."""
        return self.classify.model_copy(update={"model": self.replica_model()})

    def describe(self) -> str:
        return (
            f"{self.preprocess.name} ({self.preprocess.op}, {self.preprocess.replicas} replica(s)) -> {self.classify.name} "
            f"(ONNX, {self.instances} instance(s) x {self.intra_threads} intra-op thread(s), batch <= {self.max_batch}, "
            f"queue delay {self.queue_delay_s * 1000:g} ms) -> {self.postprocess.name} ({self.postprocess.op}, "
            f"{self.postprocess.replicas} replica(s))"
        )


def _op_step(spec: StepSpec, role: str) -> OpStep:
    if spec.op is None:
        raise ValueError(f"step {spec.name!r}: the {role} step must be an op step (`op:`), not a model")
    return OpStep(spec.name, spec.op, dict(spec.config), max(1, spec.replicas))


def peer_plan(manifest_path: Path, cpus: int | None = None) -> PeerPlan:
    """The manifest as a `PeerPlan`; `ValueError` saying what to change when it is not op -> model -> op.

    `cpus`: the CPU budget Conveyor's model step would get (default: this process's, as `conveyor run` computes it).
    """
    manifest = load_manifest(manifest_path)
    plan = ExecutionPlan.from_manifest(manifest)
    specs = [plan.nodes[name].spec for name in plan.order]
    chained = all(plan.nodes[b].inputs == (a,) for a, b in zip(plan.order, plan.order[1:]))
    if len(specs) != 3 or not chained:
        raise ValueError(
            f"pipeline {plan.pipeline!r} has steps {list(plan.order)}; `conveyor bench peers` compares a chain of three "
            "steps (preprocess op -> ONNX model -> postprocess op), like benchmarks/manifests/resnet18-float32.yaml"
        )
    pre, classify, post = specs
    if classify.model is None:
        raise ValueError(f"step {classify.name!r}: the middle step must be an ONNX model (`model:`)")
    budget = cpus if cpus is not None else step_cpu_budget(classify.resources.cpu).cpus
    intra, _ = plan_threads(classify.model, budget)
    return PeerPlan(
        pipeline=plan.pipeline,
        manifest=manifest_path.resolve(),
        preprocess=_op_step(pre, "first"),
        classify=classify,
        postprocess=_op_step(post, "last"),
        max_batch=max(1, classify.batching.maxBatchSize),
        queue_delay_s=classify.batching.maxQueueDelayMicroseconds / 1e6,
        instances=classify.model.instances * max(1, classify.replicas),
        intra_threads=intra,
        policy=classify.batching.policy,
    )
