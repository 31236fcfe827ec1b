"""Vigil: real-time fraud scoring built around a Feast feature store."""

__version__ = "0.1.0"
