"""`conveyor`: the command line. `main` parses and dispatches; each sub-command is a module of its own, loaded as a
plugin of the `conveyor.commands` entry-point group, that imports only the layer it runs.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
