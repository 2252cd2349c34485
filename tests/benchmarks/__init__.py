"""Tests of ``benchmarks/``."""
