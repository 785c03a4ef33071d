"""The pipeline gateway: runs the DAG over the steps' replicas and serves it as one model over gRPC and HTTP.

`executor` runs the DAG (calling steps through `routing`: its endpoints and balancers, re-exported here),
`servicer` and `http` are its two protocol faces, `server` owns the processes' servers.
"""

from ..routing import CHANNEL_OPTIONS, Balancer, DnsEndpoints, EndpointSource, Replica, StaticEndpoints, watch_endpoints
from .admission import Admission
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
