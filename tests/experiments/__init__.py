"""Tests of ``experiments/``: one file per experiment."""
