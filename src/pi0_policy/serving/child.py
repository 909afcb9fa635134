"""
The subprocess policy backend: ``pi0-policy serve`` as a child on loopback, used as a remote.

The node's process then never runs model code: its control thread shares the GIL with nothing
heavier than the websocket client. The child binds 127.0.0.1 on a port it picks (it prints the
port), and requires a random API key passed through its environment. When the child dies, the
client's reconnection loop starts a new one on the same port; the child gets SIGTERM when the
thread that started it ends (Linux ``PR_SET_PDEATHSIG``), so a killed node leaves no server behind.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
import ctypes
from dataclasses import replace
import logging
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time

from embodiment_adapters import EmbodimentAdapter
from pi0_policy.runtime.pipeline import Observation
from pi0_policy.runtime.policy import PolicyResult
from pi0_policy.serving.client import BackendHealth, RemoteConfig, RemotePolicy
from pi0_policy.serving.command import API_KEY_ENV
from pi0_policy.serving.server import LISTENING_PREFIX

_LOG = logging.getLogger(__name__)

LOOPBACK = '127.0.0.1'
# Lines of the child's output kept for error messages.
OUTPUT_TAIL_LINES = 20
# Seconds a stopping child gets between SIGTERM and SIGKILL.
STOP_TIMEOUT = 5.0
_PR_SET_PDEATHSIG = 1


def _child_setup(niceness: int) -> Callable[[], None]:
    """Return the pre-exec hook of the child: die with the parent thread, be nicer."""
    def setup() -> None:
        if sys.platform.startswith('linux'):
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if niceness:
            os.nice(niceness)
    return setup


class SubprocessPolicy:
    """A ``PolicyBackend`` that runs the policy in a child ``pi0-policy serve`` process."""

    def __init__(self, adapter: EmbodimentAdapter, robot: str, serve_args: Sequence[str] = (),
                 *, startup_timeout: float = 300.0, request_timeout: float = 10.0,
                 niceness: int = 0,
                 on_disconnect: Callable[[str], None] | None = None) -> None:
        """
        Start the child, wait until it listens, and connect.

        Args:
            adapter: the robot's adapter.
            robot: robot config name or path handed to the child (``--robot``).
            serve_args: further ``pi0-policy serve`` options (checkpoint, device, dtype, ...).
            startup_timeout: seconds the child may take to load the model and listen.
            request_timeout: seconds one request may take.
            niceness: added to the child's nice value (positive: the robot's own processes first).
            on_disconnect: see ``RemotePolicy``.

        Raises:
            RuntimeError: the child exited or did not listen in time (its output is quoted).
            ConnectionError: it listens but refused the connection.

        """
        self._api_key = secrets.token_urlsafe(24)
        self._command = [sys.executable, '-m', 'pi0_policy.cli', 'serve', '--robot', str(robot),
                         '--host', LOOPBACK, *serve_args]
        self._niceness = niceness
        self._tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
        self._child: subprocess.Popen | None = None
        self.restarts = 0
        self.port = self._start(port=0, wait=startup_timeout)
        self._remote: RemotePolicy | None = None
        try:
            self._remote = RemotePolicy(
                adapter, RemoteConfig(url=f'ws://{LOOPBACK}:{self.port}', api_key=self._api_key,
                                      request_timeout=request_timeout),
                on_disconnect=on_disconnect, before_reconnect=self._restart_if_dead)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int | None:
        """Return the child's process id (None when stopped)."""
        return None if self._child is None else self._child.pid

    @property
    def api_key(self) -> str:
        """Return the random key the child requires (for extra clients, e.g. benchmarks)."""
        return self._api_key

    @property
    def remote(self) -> RemotePolicy:
        """Return the client connected to the child."""
        return self._remote

    @property
    def action_horizon(self) -> int:
        """Return the number of actions T per chunk."""
        return self._remote.action_horizon

    def health(self) -> BackendHealth:
        """Return the connection state, with the number of child restarts."""
        return replace(self._remote.health(), restarts=self.restarts)

    def infer(self, observation: Observation) -> PolicyResult:
        """Infer in the child (see ``RemotePolicy.infer``)."""
        return self._remote.infer(observation)

    def warmup(self) -> PolicyResult:
        """Infer once on an example observation."""
        return self._remote.warmup()

    def close(self) -> None:
        """Disconnect and stop the child (SIGTERM, then SIGKILL)."""
        if self._remote is not None:
            self._remote.close()
        child, self._child = self._child, None
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    # ----- the child ------------------------------------------------------------------------
    def _start(self, *, port: int, wait: float | None) -> int | None:
        """Start the child; with ``wait``, block until it listens and return its port."""
        env = dict(os.environ, **{API_KEY_ENV: self._api_key})
        self._child = subprocess.Popen(
            [*self._command, '--port', str(port)], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            preexec_fn=_child_setup(self._niceness))
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(self._child, lines), daemon=True,
                         name='pi0_policy_child_output').start()
        if wait is None:
            return None
        deadline = time.monotonic() + wait
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                raise RuntimeError(self._failure(f'did not listen within {wait:.0f} s')) from None
            if line is None:
                code = self._child.wait()
                self._child = None
                raise RuntimeError(self._failure(f'exited with status {code}'))
            if line.startswith(LISTENING_PREFIX):
                return int(line.rsplit(':', 1)[1])

    def _pump(self, child: subprocess.Popen, lines: queue.Queue) -> None:
        """Forward the child's output to the log and to the start-up wait."""
        for line in child.stdout:
            line = line.rstrip()
            self._tail.append(line)
            _LOG.info('[pi0-policy serve %d] %s', child.pid, line)
            lines.put(line)
        lines.put(None)

    def _failure(self, what: str) -> str:
        tail = '\n'.join(self._tail)
        return (f"Policy server child `{' '.join(self._command)}` {what}. Its last output:\n"
                f'{tail}')

    def _restart_if_dead(self) -> None:
        """Start a new child on the same port when the old one died (client's thread)."""
        if self._child is not None and self._child.poll() is not None:
            _LOG.error('Policy server child %d exited with status %s; restarting it.',
                       self._child.pid, self._child.returncode)
            self.restarts += 1
            self._start(port=self.port, wait=None)
