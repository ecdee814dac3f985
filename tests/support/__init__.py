"""Helpers the tests share (and `benchmarks/load.py` uses): the app launcher."""
