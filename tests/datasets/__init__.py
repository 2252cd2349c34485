"""Tests of ``datasets/``: one file per module of the input pipeline."""
