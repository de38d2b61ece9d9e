"""Typed Python client for the Mycelium credits and marketplace backend."""

__version__ = "0.1.0"
