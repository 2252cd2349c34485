"""Tests of ``infra/``: one file per infrastructure module."""
