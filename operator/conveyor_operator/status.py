"""An InferencePipeline's status, computed (purely) from its spec and the Deployments the operator observes.

Conditions follow the usual Kubernetes shape: `Ready`, `Progressing` and `Degraded`, each with a reason and a
message that names the step (or the child the API server refused, and why); `lastTransitionTime` moves only
when a condition's status changes. A step whose pods cannot start (a crashing container, an image that cannot be
pulled, no node to run on) is Degraded with the container's own words: its termination message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from conveyor_runtime.errors import FieldError
from conveyor_runtime.spec import PipelineSpec, gateway_resource_name, step_resource_name

__all__ = [
    "CONDITION_TYPES",
    "POD_MESSAGE_LIMIT",
    "Condition",
    "DeploymentState",
    "GatewayStatus",
    "LiveStatus",
    "LiveStepStatus",
    "PipelineStatus",
    "StepStatus",
    "compute_status",
    "condition",
    "gateway_endpoint",
    "invalid_status",
    "pod_failure",
]

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "Saturated")
ConditionType = Literal["Ready", "Progressing", "Degraded", "Saturated"]
ConditionStatus = Literal["True", "False", "Unknown"]
#: Longest container message quoted in a condition (a termination message may be 4 KiB, or a log's tail).
POD_MESSAGE_LIMIT = 512
#: Waiting reasons of a container on its way up; any other waiting reason means it cannot start.
_STARTING = frozenset({"ContainerCreating", "PodInitializing"})


class _Status(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Condition(_Status):
    """One condition: is the pipeline Ready, is it Progressing (rolling out), is it Degraded (and why)."""

    type: ConditionType
    status: ConditionStatus
    reason: str = Field(..., min_length=1, description="CamelCase reason, e.g. InvalidSpec.")
    message: str = Field("", description="Human-readable detail; names the step and field concerned.")
    lastTransitionTime: str = Field(..., description="When status last changed (RFC 3339).")
    observedGeneration: int = Field(0, ge=0, description="The pipeline generation this condition describes.")


class StepStatus(_Status):
    """Replicas of one step's Deployment: for a step that runs in another's processes, its host's."""

    name: str
    deployment: str = Field(..., description="The Deployment whose pods serve the step (its host's, for a guest).")
    desired: int = Field(0, ge=0)
    ready: int = Field(0, ge=0)
    updated: int = Field(0, ge=0)
    inProcessWith: str | None = Field(
        None, description="The step in whose processes this step runs (it has no pods of its own); absent otherwise."
    )


class GatewayStatus(_Status):
    """Replicas of the gateway's Deployment."""

    deployment: str
    desired: int = Field(0, ge=0)
    ready: int = Field(0, ge=0)


class LiveStepStatus(_Status):
    """One step over the last window, from its pods' metrics (summed over the pods scraped at both ends of it)."""

    name: str
    pods: int = Field(0, ge=0, description="Pods whose metrics were read at both ends of the window.")
    arrivalItemsPerSecond: float = Field(0.0, ge=0, description="Rows (items) arriving: computed plus the queue's growth.")
    arrivalRequestsPerSecond: float = Field(0.0, ge=0, description="Requests answered with any code, refusals included.")
    completedItemsPerSecond: float = Field(0.0, ge=0, description="Rows computed.")
    completedRequestsPerSecond: float = Field(0.0, ge=0, description="Requests answered OK.")
    queueP50Ms: float | None = Field(None, ge=0, description="Median time a request waited in the batch queue.")
    queueP99Ms: float | None = Field(None, ge=0, description="99th percentile of the time waited in the batch queue.")
    computeP50Ms: float | None = Field(None, ge=0, description="Median time to compute one batch.")
    computeP99Ms: float | None = Field(None, ge=0, description="99th percentile of the time to compute one batch.")
    meanBatchSize: float | None = Field(None, ge=0, description="Mean rows per batch computed.")
    batchFill: float | None = Field(None, ge=0, description="Mean batch size over batching.maxBatchSize (0..1).")
    utilization: float = Field(
        0.0, ge=0, le=1, description="Share of the step's model instances busy computing (compute time over window x instances)."
    )
    queueDepth: int = Field(0, ge=0, description="Rows waiting in the batch queues when last read.")
    errorsPerSecond: dict[str, float] = Field(default_factory=dict, description="Requests failed per second, by gRPC code.")


class LiveStatus(_Status):
    """Live figures read from the pods' metrics endpoints every resync (rewritten only when they change
    meaningfully): what `kubectl get ipl` shows as THROUGHPUT, P99 and BOTTLENECK."""

    sampledAt: str = Field(..., description="When the pods were read (RFC 3339).")
    windowSeconds: float = Field(..., ge=0, description="Seconds between the two reads the figures come from.")
    throughput: str = Field("", description="Requests answered OK per second by the gateway, e.g. `812/s`.")
    p99: str = Field("", description="The gateway's 99th percentile request latency, e.g. `41ms`; `-` when idle.")
    bottleneck: str = Field("", description="The step whose model instances are busiest; empty while idle.")
    bottleneckReason: str = Field("", description="Why that step: its utilization, instances and queue.")
    throughputPerSecond: float = Field(0.0, ge=0, description="Requests answered OK per second by the gateway.")
    p50Ms: float | None = Field(None, ge=0, description="The gateway's median request latency.")
    p99Ms: float | None = Field(None, ge=0, description="The gateway's 99th percentile request latency.")
    steps: list[LiveStepStatus] = Field(default_factory=list, max_length=64)


class PipelineStatus(_Status):
    """What `kubectl get ipl` and `kubectl describe ipl` show."""

    observedGeneration: int = Field(0, ge=0, description="The spec generation the operator last acted on.")
    stepCount: int = Field(0, ge=0, description="Number of steps in the spec.")
    replicas: str = Field("", description="Ready/desired replicas summed over all steps, e.g. `3/4`.")
    endpoint: str = Field("", description="The gateway's gRPC address inside the cluster (host:port).")
    httpEndpoint: str = Field("", description="The gateway's HTTP base URL inside the cluster.")
    steps: list[StepStatus] = Field(default_factory=list, max_length=64)
    gateway: GatewayStatus | None = None
    live: LiveStatus | None = Field(None, description="Live figures from the pods' metrics; absent until two reads.")
    conditions: list[Condition] = Field(default_factory=list)


@dataclass(frozen=True)
class DeploymentState:
    """The parts of an observed Deployment that matter for status; `exists=False` for a missing one."""

    exists: bool = False
    desired: int = 0
    ready: int = 0
    updated: int = 0
    rolled_out_generation: bool = True
    failure: str = ""

    @classmethod
    def from_object(cls, obj: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]] = ()) -> DeploymentState:
        """Read a Deployment as returned by the API server (a dict; None: it does not exist) and its `pods`, whose
        failure to start (see `pod_failure`) is the Deployment's when it reports none of its own."""
        if obj is None:
            return cls()
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        generation = int((obj.get("metadata") or {}).get("generation") or 0)
        failure = ""
        for cond in status.get("conditions") or []:
            if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
                failure = cond.get("message") or cond.get("reason") or "replica failure"
            elif cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                failure = cond.get("message") or "progress deadline exceeded"
        return cls(
            exists=True,
            desired=int(spec.get("replicas", 1)),
            ready=int(status.get("readyReplicas") or 0),
            updated=int(status.get("updatedReplicas") or 0),
            rolled_out_generation=int(status.get("observedGeneration") or 0) >= generation,
            failure=failure or _pods_failure(pods),
        )

    @property
    def rolled_out(self) -> bool:
        return self.exists and self.rolled_out_generation and self.ready >= self.desired and self.updated >= self.desired


def _clip(text: str, limit: int = POD_MESSAGE_LIMIT) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quoted(said: str) -> str:
    """": <what a container or the kubelet said>" (clipped), or "" when it said nothing."""
    return f": {_clip(said)}" if said else ""


def _container_failure(container: Mapping[str, Any]) -> str:
    state = container.get("state") or {}
    waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
    last = (container.get("lastState") or {}).get("terminated") or {}
    last_said = last.get("message") or last.get("reason") or ""
    if waiting and waiting.get("reason") not in _STARTING:
        if last:
            return f"{waiting.get('reason')}, last exit code {last.get('exitCode')}" + _quoted(last_said)
        return f"{waiting.get('reason') or 'waiting'}" + _quoted(waiting.get("message") or "")
    if terminated and terminated.get("exitCode") not in (None, 0):
        return f"exit code {terminated.get('exitCode')}" + _quoted(terminated.get("message") or terminated.get("reason") or "")
    if state.get("running") and not container.get("ready") and last.get("exitCode") not in (None, 0):
        # Between back-offs a crash-looping container runs for a moment before it fails again: it stays failing
        # until it is ready, or Degraded and Ready's reason would flicker with every restart.
        return f"restarted, not ready yet, last exit code {last.get('exitCode')}" + _quoted(last_said)
    return ""


def pod_failure(pod: Mapping[str, Any]) -> str:
    """Why a pod cannot run, in its own words (a container's termination message, the kubelet's or the
    scheduler's message), prefixed by the pod and container; "" for a pod that runs, starts or is stopping."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return ""
    name = meta.get("name", "?")
    if status.get("phase") == "Failed":
        return f"pod {name}: {status.get('reason') or 'Failed'}: {_clip(status.get('message') or '')}".rstrip(": ")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return f"pod {name}: Unschedulable: {_clip(cond.get('message') or '')}".rstrip(": ")
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        failure = _container_failure(container)
        if failure:
            return f"pod {name}: container {container.get('name')}: {failure}"
    return ""


def _pods_failure(pods: Sequence[Mapping[str, Any]]) -> str:
    """The first failing pod's words, and how many more fail (replicas usually fail alike)."""
    failures = [failure for failure in map(pod_failure, pods) if failure]
    if not failures:
        return ""
    more = len(failures) - 1
    return failures[0] + (f" (and {more} more pod{'s' if more > 1 else ''})" if more else "")


def gateway_endpoint(pipeline: str, namespace: str, port: int) -> str:
    """The gateway Service's in-cluster address, e.g. ``demo-gateway.default.svc:8001``."""
    return f"{gateway_resource_name(pipeline)}.{namespace}.svc:{port}"


def condition(
    type_: ConditionType,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    now: str,
    generation: int,
    previous: Sequence[Mapping[str, Any]] = (),
) -> Condition:
    """A condition whose lastTransitionTime is kept from `previous` when its status did not change."""
    since = now
    for old in previous:
        if old.get("type") == type_ and old.get("status") == status and old.get("lastTransitionTime"):
            since = str(old["lastTransitionTime"])
    return Condition(
        type=type_, status=status, reason=reason, message=message, lastTransitionTime=since, observedGeneration=generation
    )


def _describe(label: str, state: DeploymentState) -> str:
    if not state.exists:
        return f"{label}: Deployment is missing"
    return f"{label}: {state.ready}/{state.desired} replicas ready"


def compute_status(
    pipeline: str,
    namespace: str,
    generation: int,
    spec: PipelineSpec,
    deployments: Mapping[str, DeploymentState],
    *,
    now: str,
    previous: Sequence[Mapping[str, Any]] = (),
    apply_failures: Sequence[str] = (),
) -> PipelineStatus:
    """The status of a valid pipeline; `deployments` maps Deployment names to what was observed.

    `apply_failures` name the children the API server refused, with its message: they make the pipeline Degraded.
    """
    steps: list[StepStatus] = []
    states: list[tuple[str, DeploymentState]] = []
    by_name = {step.name: step for step in spec.steps}
    for step in spec.steps:
        # A guest (`inProcessWith`) has no Deployment: it shows its host's, whose state is judged once, as the host's.
        host = by_name.get(step.inProcessWith or step.name, step)
        deployment = step_resource_name(pipeline, host.name)
        state = deployments.get(deployment, DeploymentState())
        desired = host.replicas if not state.exists else state.desired
        steps.append(
            StepStatus(
                name=step.name,
                deployment=deployment,
                desired=desired,
                ready=state.ready,
                updated=state.updated,
                inProcessWith=step.inProcessWith,
            )
        )
        if step.inProcessWith is None:
            states.append((f"step {step.name!r}", state))
    gateway_name = gateway_resource_name(pipeline)
    gateway_state = deployments.get(gateway_name, DeploymentState())
    states.append(("gateway", gateway_state))

    failing = [f"{label}: {state.failure}" for label, state in states if state.failure]
    pending = [_describe(label, state) for label, state in states if not state.rolled_out]
    zero = [label for label, state in states if state.exists and state.desired == 0]

    own = [s for s in steps if s.inProcessWith is None]  # a guest's replicas are its host's: counted once

    def cond(type_: ConditionType, status: ConditionStatus, reason: str, message: str) -> Condition:
        return condition(type_, status, reason, message, now=now, generation=generation, previous=previous)

    if apply_failures:
        degraded = cond("Degraded", "True", "ApplyFailed", "; ".join([*apply_failures, *failing]))
    elif failing:
        degraded = cond("Degraded", "True", "StepFailing", "; ".join(failing))
    else:
        degraded = cond("Degraded", "False", "AsExpected", "no step reports a failure")
    if pending:
        progressing = cond("Progressing", "True", "RollingOut", "; ".join(pending))
    else:
        progressing = cond("Progressing", "False", "RolloutComplete", "every Deployment is rolled out")
    if apply_failures:
        ready = cond("Ready", "False", "ApplyFailed", "; ".join(apply_failures))
    elif failing:
        ready = cond("Ready", "False", "StepFailing", "; ".join(failing))
    elif pending:
        ready = cond("Ready", "False", "StepsNotReady", "; ".join(pending))
    elif zero:
        ready = cond("Ready", "False", "ScaledToZero", "; ".join(f"{label} has 0 replicas" for label in zero))
    else:
        ready = cond("Ready", "True", "AllStepsReady", f"{len(spec.steps)} step(s) and the gateway are ready")

    return PipelineStatus(
        observedGeneration=generation,
        stepCount=len(spec.steps),
        replicas=f"{sum(s.ready for s in own)}/{sum(s.desired for s in own)}",
        endpoint=gateway_endpoint(pipeline, namespace, spec.gateway.grpcPort),
        httpEndpoint=f"http://{gateway_endpoint(pipeline, namespace, spec.gateway.httpPort)}",
        steps=steps,
        gateway=GatewayStatus(
            deployment=gateway_name,
            desired=gateway_state.desired if gateway_state.exists else spec.gateway.replicas,
            ready=gateway_state.ready,
        ),
        conditions=[ready, progressing, degraded],
    )


def invalid_status(
    generation: int,
    errors: Sequence[FieldError],
    *,
    step_count: int = 0,
    now: str,
    previous: Sequence[Mapping[str, Any]] = (),
) -> PipelineStatus:
    """The status of a pipeline whose spec breaks a rule: Degraded with reason InvalidSpec, naming each field."""
    message = "; ".join(str(e) for e in errors) or "invalid spec"

    def cond(type_: ConditionType, status: ConditionStatus, reason: str, text: str) -> Condition:
        return condition(type_, status, reason, text, now=now, generation=generation, previous=previous)

    return PipelineStatus(
        observedGeneration=generation,
        stepCount=step_count,
        conditions=[
            cond("Ready", "False", "InvalidSpec", message),
            cond("Progressing", "False", "InvalidSpec", "nothing is rolled out until the spec is fixed"),
            cond("Degraded", "True", "InvalidSpec", message),
        ],
    )
