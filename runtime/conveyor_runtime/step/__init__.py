"""A step: one op or ONNX model served over gRPC with dynamic batching (what every step pod runs).

`batcher` forms batches, `session` runs ONNX Runtime, `op_loop` is the request path (pre/process/post),
`servicer` speaks the protocol, `server` owns the gRPC server, metrics and the graceful
stop; `in_process_client` calls a step served in the caller's own process.
"""

from .batcher import Batcher, BatchPlan, batch_key, form_batch, split_rows
from .cpus import (
    CpuBudget,
    cgroup_cpu_limit,
    cpu_budget,
    cpu_count,
    parse_cfs_quota,
    parse_cpu_max,
    parse_cpu_quantity,
    step_cpu_budget,
)
from .forwarder import Forwarder, PeerSources, peer_sources
from .in_process_client import InProcessStepClient
from .inputs import validate_inputs
from .metrics import BATCH_REASONS, StepMetrics
from .model_file import ensure_model
from .model_op import ModelOp
from .op_loop import OpLoop, ignored_batching, load_step_op
from .server import DEFAULT_GRACE_S, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PRE_STOP_S, StepServer, create_step_server
from .servicer import SERVER_NAME, StepServicer
from .session import (
    ORT_DATATYPES,
    ModelSession,
    plan_devices,
    plan_memory_limits,
    plan_precision,
    plan_providers,
    plan_threads,
    plan_wide_threads,
)
from .termination import TERMINATION_LOG, TERMINATION_MESSAGE_LIMIT, termination_message, write_termination_message

__all__ = [
    "BATCH_REASONS",
    "DEFAULT_GRACE_S",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PRE_STOP_S",
    "ORT_DATATYPES",
    "SERVER_NAME",
    "TERMINATION_LOG",
    "TERMINATION_MESSAGE_LIMIT",
    "BatchPlan",
    "Batcher",
    "CpuBudget",
    "Forwarder",
    "InProcessStepClient",
    "ModelOp",
    "ModelSession",
    "OpLoop",
    "PeerSources",
    "StepMetrics",
    "StepServer",
    "StepServicer",
    "batch_key",
    "cgroup_cpu_limit",
    "cpu_budget",
    "cpu_count",
    "create_step_server",
    "ensure_model",
    "form_batch",
    "ignored_batching",
    "load_step_op",
    "parse_cfs_quota",
    "parse_cpu_max",
    "parse_cpu_quantity",
    "peer_sources",
    "plan_devices",
    "plan_memory_limits",
    "plan_precision",
    "plan_providers",
    "plan_threads",
    "plan_wide_threads",
    "split_rows",
    "step_cpu_budget",
    "termination_message",
    "validate_inputs",
    "write_termination_message",
]
