"""
Tie a node process's life to the process that started it (``--exit-with-parent``).

``ros2 launch`` stops its nodes on Ctrl-C, but not when it is itself killed (SIGTERM, SIGKILL,
a crash; launch logs "using SIGTERM can result in orphaned processes"): a policy node left behind
keeps commanding the robot with nobody watching. With ``--exit-with-parent`` (the launch files
pass it) the node asks Linux to send it SIGINT when its parent exits, which runs its normal
Ctrl-C shutdown (final hold). No effect on other systems.
"""

import ctypes
import os
import signal
import sys

# Command-line flag (before --ros-args) that turns the behaviour on.
EXIT_WITH_PARENT_FLAG = '--exit-with-parent'
# prctl(2) option: signal to deliver when the parent exits.
_PR_SET_PDEATHSIG = 1


def exit_with_parent(signum: int = signal.SIGINT) -> bool:
    """
    Have the kernel send ``signum`` to this process when its parent exits (Linux only).

    If the parent is already gone (adopted by init), the signal is sent at once.

    Returns:
        Whether the request was made (False on systems without prctl).

    Raises:
        OSError: prctl refused the request.

    """
    if not sys.platform.startswith('linux'):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f'prctl(PR_SET_PDEATHSIG, {int(signum)}) failed: '
                      f'{os.strerror(errno)}')
    if parent == 1 or os.getppid() != parent:
        os.kill(os.getpid(), signum)
    return True


def exit_with_parent_if_asked(argv: list[str] | None) -> bool:
    """Call ``exit_with_parent`` when ``argv`` (default sys.argv) holds the flag."""
    if EXIT_WITH_PARENT_FLAG not in (sys.argv if argv is None else argv):
        return False
    return exit_with_parent()
