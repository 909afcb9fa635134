"""ament_pep257 over the package's Python code (ament's docstring convention)."""

import pathlib

from ament_pep257.main import main
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINTED = ['src', 'test', 'launch', 'benchmarks', 'setup.py']
# The ament convention, plus ignoring the numpy-only section rules (underlined section names, a
# blank line after the last section) that contradict the Google-style Args/Returns/Raises
# sections the house style asks for (HS-18).
GOOGLE_SECTIONS_IGNORE = ['D406', 'D407', 'D413']


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    """Fail on any docstring that breaks the ament pep257 convention."""
    paths = [str(ROOT / p) for p in LINTED if (ROOT / p).exists()]
    rc = main(argv=['--add-ignore', *GOOGLE_SECTIONS_IGNORE, '--', *paths])
    assert rc == 0, 'Found docstring style errors (listed above)'
