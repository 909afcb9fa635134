"""ament_pep257 over the package's Python code (ament's docstring convention)."""

import pathlib

from ament_pep257.main import main
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINTED = ['src', 'test', 'launch', 'benchmarks', 'setup.py']


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    """Fail on any docstring that breaks the ament pep257 convention."""
    paths = [str(ROOT / p) for p in LINTED if (ROOT / p).exists()]
    rc = main(argv=paths)
    assert rc == 0, 'Found docstring style errors (listed above)'
