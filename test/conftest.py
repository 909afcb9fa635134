"""Shared pytest setup: test the source tree, keep DDS on loopback, bound torch threads."""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Import the packages from src/ (not a stale installed copy) so that tests test this tree.
sys.path.insert(0, str(ROOT / 'src'))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
# One DDS domain per test process so that concurrent runs do not see each other.
os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 100))
os.environ.setdefault('ROS_LOG_DIR', str(ROOT / 'log' / 'ros'))

SHARED = ROOT.parent / 'shared'
PARITY_FIXTURES = SHARED / 'fixtures' / 'pi0_parity'
