"""ament_flake8 over the package's Python code (ament profile: 99 columns, single quotes)."""

import pathlib

from ament_flake8.main import main_with_errors
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The venv and colcon's build/install/log folders live inside the repository root: lint only ours.
LINTED = ['src', 'test', 'launch', 'benchmarks', 'setup.py']


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    """Report every flake8 error of the package, with its count."""
    paths = [str(ROOT / p) for p in LINTED if (ROOT / p).exists()]
    rc, errors = main_with_errors(argv=paths)
    assert rc == 0, f'Found {len(errors)} code style errors / warnings:\n' + '\n'.join(errors)
