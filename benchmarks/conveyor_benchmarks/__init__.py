"""`conveyor bench`: load generators and reports for one step and for whole pipelines."""

__all__: list[str] = []
