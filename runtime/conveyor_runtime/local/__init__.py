"""`conveyor run` on one machine: every step replica as a supervised process, the gateway in-process."""

from .replica import ReplicaProcess
from .runner import LocalRunner

__all__ = ["LocalRunner", "ReplicaProcess"]
