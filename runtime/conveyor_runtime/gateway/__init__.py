"""The pipeline gateway: runs the DAG over the steps' replicas and serves it as one model over gRPC and HTTP.

`endpoints` finds replicas, `balancer` picks one per call and retries, `executor` runs the DAG, `servicer` and
`http` are its two protocol faces, `server` owns the processes' servers.
"""

from .admission import Admission
from .balancer import CHANNEL_OPTIONS, Balancer, Replica
from .endpoints import DnsEndpoints, EndpointSource, StaticEndpoints, watch_endpoints
from .executor import PipelineExecutor
from .http import create_http_app
from .server import Gateway, create_gateway, server_options
from .servicer import GatewayServicer

__all__ = [
    "CHANNEL_OPTIONS",
    "Admission",
    "Balancer",
    "DnsEndpoints",
    "EndpointSource",
    "Gateway",
    "GatewayServicer",
    "PipelineExecutor",
    "Replica",
    "StaticEndpoints",
    "create_gateway",
    "create_http_app",
    "server_options",
    "watch_endpoints",
]
