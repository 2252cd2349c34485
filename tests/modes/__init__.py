"""Tests of ``modes/``: one file per mode module."""
