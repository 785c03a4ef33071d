"""`conveyor run` on one machine: every step replica as a supervised process, the gateway in the entry step's process
(one replica) or in the runner's."""

from .replica import ReplicaProcess
from .runner import GATEWAY_PLACEMENTS, LocalRunner

__all__ = ["GATEWAY_PLACEMENTS", "LocalRunner", "ReplicaProcess"]
