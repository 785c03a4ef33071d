"""The examples' demo models, built by Conveyor itself (none is downloaded): random-weight ResNets and a digits MLP.

A manifest names a builder as a step's `model.build` (e.g. ``conveyor_examples.resnet:build``); the step writes the
file the first time it starts. Not part of the runtime: the production image has neither this package nor
scikit-learn; `pip install -e '.[examples]'` gives both here, and the `examples` image target
(`conveyor-examples:dev`) in a cluster.
"""

__all__: list[str] = []
