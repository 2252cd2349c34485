"""Tests of ``evaluation/``: one file per module of sample quality."""
