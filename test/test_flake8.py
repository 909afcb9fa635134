"""ament_flake8 over the package's Python code (ament profile: 99 columns, single quotes)."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The venv and colcon's build/install/log folders live inside the repository root: lint only ours.
LINTED = ['src', 'test', 'launch', 'benchmarks', 'setup.py']
# flake8 checks files in a multiprocessing pool (fork). Forking this pytest process, which runs
# ROS nodes and DDS threads in other tests, can deadlock the children: lint in a fresh process.
_LINT = ('import sys; from ament_flake8.main import main_with_errors; '
         'rc, errors = main_with_errors(argv=sys.argv[1:]); '
         "print(f'{len(errors)} errors'); sys.exit(rc)")
TIMEOUT_S = 300


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    """Report every flake8 error of the package, with its count."""
    paths = [str(ROOT / p) for p in LINTED if (ROOT / p).exists()]
    result = subprocess.run([sys.executable, '-c', _LINT, *paths], capture_output=True,
                            text=True, timeout=TIMEOUT_S, cwd=ROOT)
    assert result.returncode == 0, (
        f'Code style errors / warnings:\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}')
    assert '0 errors' in result.stdout
