"""package.xml declares every ROS package the code imports, so `rosdep install` is complete."""

import ast
import pathlib
import xml.etree.ElementTree as ElementTree

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Top-level Python modules that come from ROS packages of the same name.
ROS_MODULE_SUFFIXES = ('_msgs', '_srvs', '_interfaces')
ROS_MODULES = {'rclpy', 'cv_bridge', 'ament_index_python'}
# Optional at run time (imported inside try/except where ROS provides them).
OPTIONAL = {'cv_bridge', 'ament_index_python'}


def imported_top_level_modules(folder: pathlib.Path) -> set[str]:
    """Return the top-level module names imported anywhere under a folder."""
    names = set()
    for path in folder.rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split('.')[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split('.')[0])
    return names


def declared(kind_prefix: str = '') -> set[str]:
    """Return the package names of the <*depend> tags of the root package.xml."""
    root = ElementTree.parse(ROOT / 'package.xml').getroot()
    return {e.text for e in root if e.tag.endswith('depend') and e.tag.startswith(kind_prefix)}


def test_every_imported_ros_package_is_an_exec_depend():
    imported = {m for m in imported_top_level_modules(ROOT / 'src')
                if m in ROS_MODULES or m.endswith(ROS_MODULE_SUFFIXES)}
    missing = imported - declared('exec') - OPTIONAL - {'pi0_policy'}
    assert imported, 'found no ROS imports: the scan is broken'
    assert not missing, f'add <exec_depend> tags to package.xml for {sorted(missing)}'


def test_interface_package_is_declared_and_versions_agree():
    assert 'pi0_msgs' in declared('exec')
    msgs = ElementTree.parse(ROOT / 'src' / 'pi0_msgs' / 'package.xml').getroot()
    policy = ElementTree.parse(ROOT / 'package.xml').getroot()
    assert msgs.findtext('version') == policy.findtext('version')
    assert policy.get('format') == msgs.get('format') == '3'
