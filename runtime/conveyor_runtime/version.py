"""The package version, in a module of its own so that servers can report it without importing the public face."""

__all__ = ["__version__"]

__version__ = "0.1.0"
