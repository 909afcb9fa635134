"""HS-1: the pure packages (model, engine, runtime, sim, data, ...) never import rclpy or ROS."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = ROOT / 'src'
PURE_PACKAGES = ['pi0_policy.model', 'pi0_policy.engine', 'pi0_policy.runtime', 'pi0_policy.sim',
                 'pi0_policy.data', 'pi0_policy.training', 'pi0_policy.serving',
                 'embodiment_adapters']

# Runs in a fresh interpreter where `import rclpy` (and the message packages) raise ImportError.
_PROBE = r"""
import importlib, pkgutil, sys
for blocked in ('rclpy', 'pi0_msgs', 'sensor_msgs', 'std_msgs', 'pi0_policy.ros'):
    sys.modules[blocked] = None
failures = []
modules = []
for name in sys.argv[1:]:
    package = importlib.import_module(name)
    modules.append(name)
    for info in pkgutil.walk_packages(package.__path__, prefix=name + '.'):
        modules.append(info.name)
for name in modules:
    try:
        importlib.import_module(name)
    except ImportError as e:
        failures.append(f'{name}: {e}')
print('\n'.join(failures))
print(f'checked {len(modules)} modules')
sys.exit(1 if failures else 0)
"""


def _modules_under(package: str) -> list[str]:
    folder = SRC.joinpath(*package.split('.'))
    return sorted(p.stem for p in folder.glob('*.py'))


def test_pure_packages_import_without_rclpy():
    """Import every module of the pure packages with rclpy made unimportable."""
    result = subprocess.run(
        [sys.executable, '-c', _PROBE, *PURE_PACKAGES],
        cwd=ROOT, env={'PYTHONPATH': str(SRC), 'PATH': '/usr/bin:/bin'},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        'A pure module imports rclpy or the ROS layer (move that code to pi0_policy/ros/):\n'
        + result.stdout + result.stderr)
    # The probe really walked the packages (guards against a vacuous pass).
    assert 'checked' in result.stdout
    assert len(_modules_under('embodiment_adapters')) > 1


def test_probe_catches_an_rclpy_import(tmp_path):
    """The probe fails on a module that imports rclpy, so the test above can fail."""
    bad = tmp_path / 'impure_pkg'
    bad.mkdir()
    (bad / '__init__.py').write_text('')
    (bad / 'node.py').write_text('import rclpy\n')
    result = subprocess.run(
        [sys.executable, '-c', _PROBE, 'impure_pkg'],
        env={'PYTHONPATH': str(tmp_path), 'PATH': '/usr/bin:/bin'},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert 'impure_pkg.node' in result.stdout
