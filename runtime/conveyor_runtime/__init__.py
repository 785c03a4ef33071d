"""Conveyor's runtime: the step server, the pipeline gateway and the local runner, in one package.

What users import lives here: the Op API for custom steps, the client, and the error classes.

    from conveyor_runtime import Op, OpError, Skip, Client

The layers, bottom up: `errors`, `arrays`, `spec`; `protocol`; `serving`; `ops`; `step` | `gateway` | `client`;
`local`; `cli`. A layer imports only from the layers below it (checked by import-linter in CI).
"""

from .arrays import Arrays
from .client import Client, image_tensor
from .errors import (
    ConveyorError,
    DeadlineExceeded,
    FieldError,
    InvalidManifest,
    InvalidRequest,
    ModelLoadError,
    ModelNotReady,
    OpError,
    QueueFull,
    RequestError,
    RunnerFailed,
    StepCallError,
    StepFailed,
    UsageError,
)
from .ops import Op, OpContext, RequestContext, Skip, TensorSpec
from .version import __version__

__all__ = [
    "Arrays",
    "Client",
    "ConveyorError",
    "DeadlineExceeded",
    "FieldError",
    "InvalidManifest",
    "InvalidRequest",
    "ModelLoadError",
    "ModelNotReady",
    "Op",
    "OpContext",
    "OpError",
    "QueueFull",
    "RequestContext",
    "RequestError",
    "RunnerFailed",
    "Skip",
    "StepCallError",
    "StepFailed",
    "TensorSpec",
    "UsageError",
    "__version__",
    "image_tensor",
]
