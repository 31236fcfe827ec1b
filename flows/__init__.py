"""Bytewax dataflows: streaming features (features.py) and their sources and sinks."""
