"""Fixtures shared by the mode tests: ``reference_run``, the uninterrupted toy run that training
and evaluation tests compare with or start from (module-scoped: one run per file that uses it)."""

import pytest

from tests.runs import run_main


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """An uninterrupted single-device run of the toy config, trained in a subprocess."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  result = run_main(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir
