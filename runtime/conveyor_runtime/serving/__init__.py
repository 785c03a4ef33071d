"""What every server process shares: owned background tasks, gRPC health, the metrics endpoint, HTTP sites,
addresses, signals, giving large requests' memory back, short garbage-collector passes."""

from .addresses import format_address, free_port, free_ports, parse_address
from .health import NOT_SERVING, SERVING, HealthService
from .heap import freeze_startup_objects
from .http_site import HttpSite
from .memory import LARGE_REQUEST_BYTES, LargeRequestTrimmer, malloc_trim, tune_malloc_for_large_requests
from .metrics_endpoint import MetricsEndpoint
from .signals import stop_on_signals
from .tasks import TaskSet

__all__ = [
    "LARGE_REQUEST_BYTES",
    "NOT_SERVING",
    "SERVING",
    "HealthService",
    "HttpSite",
    "LargeRequestTrimmer",
    "MetricsEndpoint",
    "TaskSet",
    "format_address",
    "free_port",
    "free_ports",
    "freeze_startup_objects",
    "malloc_trim",
    "parse_address",
    "stop_on_signals",
    "tune_malloc_for_large_requests",
]
