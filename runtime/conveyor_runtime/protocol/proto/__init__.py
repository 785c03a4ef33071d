"""Generated Open Inference Protocol messages (`scripts/gen-proto.sh`); import them as `conveyor_runtime.protocol.pb`."""

__all__: list[str] = []
