"""Conveyor's error tree: every error a user can meet is one of these, each with the case that raises it.

    ConveyorError            base of every error Conveyor raises on purpose
    ├── InvalidManifest      a pipeline manifest or step spec breaks a rule; lists each field path
    ├── UsageError           a command's flag, argument or environment setting is unusable (bad flag, missing file)
    ├── ModelLoadError       a model file is missing, unreadable or clashes with its step's settings
    ├── RunnerFailed         `conveyor run` cannot bring the pipeline up (a step keeps crashing, a port is taken)
    └── RequestError         one request fails; `status` is the gRPC status name the client sees
        ├── InvalidRequest       malformed input: wrong dtype, shape, size, unknown input   -> INVALID_ARGUMENT
        ├── ModelNotReady        the step or model is loading or shutting down               -> UNAVAILABLE
        ├── QueueFull            a batch queue at maxQueueSize, a gateway at its request cap  -> RESOURCE_EXHAUSTED
        ├── DeadlineExceeded     the client's deadline passed before compute                  -> DEADLINE_EXCEEDED
        ├── StepFailed           a server-side fault while computing                          -> INTERNAL
        ├── StepCallError        a step answered the gateway with an error (its own status)
        └── OpError              an op hook rejected the request with its own status and reason code

Status names are plain strings (grpc.StatusCode member names) so that this module stays free of grpc;
`conveyor_runtime.protocol.status` maps them to gRPC codes and HTTP statuses in one table.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "STATUS_NAMES",
    "ConveyorError",
    "DeadlineExceeded",
    "FieldError",
    "InvalidManifest",
    "InvalidRequest",
    "ModelLoadError",
    "ModelNotReady",
    "OpError",
    "QueueFull",
    "RequestError",
    "RunnerFailed",
    "StepCallError",
    "StepFailed",
    "UsageError",
]

#: The gRPC status names that a RequestError may carry.
STATUS_NAMES = frozenset(
    {
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)


class ConveyorError(Exception):
    """Base of every error Conveyor raises on purpose."""


@dataclass(frozen=True)
class FieldError:
    """One broken rule in a manifest: where (``spec.steps[1].inputs[0]``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidManifest(ConveyorError):
    """Raised when a pipeline manifest or step spec is invalid; lists every broken field."""

    def __init__(self, errors: list[FieldError], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} invalid field(s){where}:\n{lines}")


class UsageError(ConveyorError):
    """Raised when a command's flag or argument, or an environment setting, cannot be used; says what to pass."""


class ModelLoadError(ConveyorError):
    """Raised when a model cannot be loaded: missing file, bad ONNX, or settings that clash with it."""


class RunnerFailed(ConveyorError):
    """Raised when `conveyor run` cannot bring the pipeline up (a step keeps crashing, a port is taken, ...)."""


class RequestError(ConveyorError):
    """Raised when one request fails; ``status`` is the gRPC status name the client sees."""

    status: str = "INTERNAL"

    def __init__(self, message: str, *, status: str | None = None) -> None:
        if status is not None:
            if status not in STATUS_NAMES or status == "OK":
                raise ValueError(f"status must be a gRPC status name other than OK, got {status!r}")
            self.status = status
        self.message = message
        super().__init__(message)


class InvalidRequest(RequestError):
    """Raised when a request is malformed; the message names the input and the reason."""

    status = "INVALID_ARGUMENT"


class ModelNotReady(RequestError):
    """Raised when a request arrives while the step is loading or draining."""

    status = "UNAVAILABLE"


class QueueFull(RequestError):
    """Raised when a step's batch queue already holds maxQueueSize rows, or the gateway has maxConcurrentRequests."""

    status = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(RequestError):
    """Raised when a request's deadline passed before it reached compute."""

    status = "DEADLINE_EXCEEDED"


class StepFailed(RequestError):
    """Raised when computing a batch fails on the server's side."""

    status = "INTERNAL"


class StepCallError(RequestError):
    """Raised when a called step answers with an error; the message is prefixed with the step's name.

    ``relayed``: `details` already came through a step that forwarded the request (and named the step that failed),
    so it is kept as it is.
    """

    def __init__(self, step: str, status: str, details: str, *, relayed: bool = False) -> None:
        self.step = step
        self.relayed = relayed
        status = status if status in STATUS_NAMES else "INTERNAL"
        super().__init__(details if relayed and details else f"step {step!r}: {details or status}", status=status)


class OpError(RequestError):
    """Raised by an op hook to fail one request with its own status and an app-level ``reason`` code.

    ``reason`` (e.g. ``"IMAGE_DECODE"``) is prefixed to the message the client sees, so that clients can
    branch on it without parsing prose.
    """

    def __init__(self, message: str, *, status: str = "INVALID_ARGUMENT", reason: str = "") -> None:
        self.reason = reason
        super().__init__(f"[{reason}] {message}" if reason else message, status=status)
