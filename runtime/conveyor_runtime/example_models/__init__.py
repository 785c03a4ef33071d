"""Demo ONNX models that Conveyor builds itself for its examples, tests and benchmarks (none is downloaded).

A manifest names one as a step's `model.build` (e.g. ``conveyor_runtime.example_models.resnet:build``), which
writes the file the first time the step starts.
"""

__all__: list[str] = []
