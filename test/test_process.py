"""
--exit-with-parent: a node process gets SIGINT when the process that started it dies.

Real processes: a parent starts a child and is SIGKILLed (what happens to ros2 launch on
SIGKILL; SIGTERM leaves launch's children running too). The child with the flag exits through
its SIGINT handling; the control child without it outlives its parent.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

from pi0_policy.ros.process import EXIT_WITH_PARENT_FLAG
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'),
                                reason='PR_SET_PDEATHSIG is Linux only')
# Generous: the machine may be loaded; the child reacts within milliseconds when unloaded.
WAIT_S = 20.0

CHILD = """
import pathlib, sys, time
from pi0_policy.ros.process import exit_with_parent_if_asked
pathlib.Path(sys.argv[1]).write_text(str(exit_with_parent_if_asked(sys.argv)))
try:
    time.sleep(60)
except KeyboardInterrupt:
    pathlib.Path(sys.argv[1]).write_text('SIGINT')
"""
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, '-c', sys.argv[1], *sys.argv[2:]])
print(child.pid, flush=True)
time.sleep(60)
"""


def start_family(tmp_path: pathlib.Path,
                 *flags: str) -> tuple[subprocess.Popen, int, pathlib.Path]:
    """Start parent -> child; return the parent, the child's pid and the child's report file."""
    report = tmp_path / 'report.txt'
    parent = subprocess.Popen([sys.executable, '-c', PARENT, CHILD, str(report), *flags],
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + WAIT_S
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return parent, child, report


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    status = pathlib.Path(f'/proc/{pid}/stat').read_text().split(') ')[-1]
    return not status.startswith('Z')


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_child_with_the_flag_gets_sigint_when_its_parent_is_killed(tmp_path):
    parent, child, report = start_family(tmp_path, EXIT_WITH_PARENT_FLAG)
    assert report.read_text() == 'True'
    parent.kill()
    parent.wait()
    assert wait_gone(child, WAIT_S), 'the child outlived its parent'
    assert report.read_text() == 'SIGINT'  # its Ctrl-C path ran, not a hard kill


def test_control_child_without_the_flag_outlives_its_parent(tmp_path):
    parent, child, report = start_family(tmp_path)
    try:
        assert report.read_text() == 'False'
        parent.kill()
        parent.wait()
        assert not wait_gone(child, 1.0)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
