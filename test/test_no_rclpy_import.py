"""HS-1: the pure packages (model, engine, runtime, sim, data, ...) never import rclpy or ROS."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = ROOT / 'src'
# The ROS layer: the only subpackage of pi0_policy that may import rclpy.
ROS_PACKAGE = 'ros'
# Packages that must exist and be checked (guards against a walk that finds nothing).
EXPECTED = {'pi0_policy.model', 'pi0_policy.engine', 'pi0_policy.runtime', 'pi0_policy.sim',
            'pi0_policy.data', 'pi0_policy.training', 'pi0_policy.serving',
            'embodiment_adapters'}


def pure_packages() -> list[str]:
    """Return every subpackage of pi0_policy except ros/, and embodiment_adapters."""
    packages = sorted(f'pi0_policy.{p.parent.name}'
                      for p in (SRC / 'pi0_policy').glob('*/__init__.py')
                      if p.parent.name != ROS_PACKAGE)
    return packages + ['embodiment_adapters']


# Runs in a fresh interpreter where every ROS package (rclpy, message and interface packages,
# launch, the ROS layer) refuses to import. A failure names the module whose import pulled it
# in. Afterwards no ROS module may be loaded at all (what the modules actually imported).
_PROBE = r"""
import importlib, importlib.abc, pkgutil, sys

ROS_TOP = {'rclpy', 'rpyutils', 'rosidl_runtime_py', 'rosidl_parser', 'launch', 'launch_ros',
           'ament_index_python', 'cv_bridge', 'rosbag2_py', 'message_filters', 'tf2_ros',
           'builtin_interfaces', 'rcl_interfaces', 'rosgraph_msgs'}
ROS_SUFFIXES = ('_msgs', '_srvs', '_interfaces', '_actions')


def is_ros(name):
    top = name.split('.')[0]
    return (top in ROS_TOP or top.endswith(ROS_SUFFIXES) or name == 'pi0_policy.ros'
            or name.startswith('pi0_policy.ros.'))


class RefuseRos(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if is_ros(name):
            raise ImportError(f'{name} is a ROS package')
        return None


sys.meta_path.insert(0, RefuseRos())
failures, modules = [], []
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
loaded = sorted(name for name in sys.modules if is_ros(name))
if loaded:
    failures.append(f'ROS modules were loaded: {loaded}')
print('\n'.join(failures))
print(f'checked {len(modules)} modules: {" ".join(modules)}')
sys.exit(1 if failures else 0)
"""


def run_probe(packages: list[str], *paths: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-c', _PROBE, *packages], cwd=ROOT,
        env={'PYTHONPATH': ':'.join(map(str, paths)), 'PATH': '/usr/bin:/bin'},
        capture_output=True, text=True, timeout=300)


def test_pure_packages_import_without_rclpy():
    """Import every module of every pure package with all ROS packages made unimportable."""
    packages = pure_packages()
    assert EXPECTED <= set(packages), f'missing packages: {EXPECTED - set(packages)}'
    result = run_probe(packages, SRC)
    assert result.returncode == 0, (
        'A pure module imports rclpy or the ROS layer (move that code to pi0_policy/ros/):\n'
        + result.stdout + result.stderr)
    # The probe really walked the packages (guards against a vacuous pass): every module file.
    checked = set(result.stdout.split('checked', 1)[1].split(':', 1)[1].split())
    for package in packages:
        folder = SRC.joinpath(*package.split('.'))
        for module in folder.rglob('*.py'):
            parts = module.relative_to(SRC).with_suffix('').parts
            name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
            assert name in checked, f'{name} was not imported by the probe'


@pytest.mark.parametrize('line', ['import rclpy', 'from geometry_msgs.msg import Twist',
                                  'import launch', 'from pi0_policy.ros import params'])
def test_probe_catches_a_ros_import(tmp_path, line):
    """The probe fails on a module that imports ROS, so the test above can fail."""
    bad = tmp_path / 'impure_pkg'
    bad.mkdir()
    (bad / '__init__.py').write_text('')
    (bad / 'node.py').write_text(line + '\n')
    result = run_probe(['impure_pkg'], tmp_path, SRC)
    assert result.returncode == 1
    assert 'impure_pkg.node' in result.stdout and 'is a ROS package' in result.stdout
