"""Tests of ``models/``: one file per network module."""
