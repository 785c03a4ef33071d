"""Conveyor's runtime: the step server, the pipeline gateway and the local runner, in one package."""

__all__: list[str] = []
__version__ = "0.1.0"
