"""
Plan the move to a robot's start pose (``start_pose`` in its robot config) within its limits.

openpi's ALOHA checkpoints were trained from a reset pose (``[0, -1.5, 1.5, 0, 0, 0]`` per arm);
a run should start there. `plan_start_move` turns the measured joint positions into a trajectory
of commands at the control rate: all joints start and arrive together (synchronised), along a
smooth cubic profile ``s(u) = 3u^2 - 2u^3`` whose duration makes the fastest joint peak at
``velocity_scale * max_velocity``, so no command moves a joint faster than its limit and the
speed starts and ends at zero. Base dims (velocities) are commanded zero throughout. Pure numpy.

Axis letters: K steps of the move, D command dims (the adapter's action_names).
"""

from __future__ import annotations

from dataclasses import dataclass
import math

from embodiment_adapters import EmbodimentAdapter
import numpy as np

# Peak of ds/du of the cubic profile s(u) = 3u^2 - 2u^3 (at u = 1/2).
PROFILE_PEAK_SLOPE = 1.5


def smooth_profile(u: np.ndarray) -> np.ndarray:
    """Return the cubic ease ``3u^2 - 2u^3`` of u in [0, 1] (zero slope at both ends)."""
    u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


@dataclass(frozen=True)
class StartMove:
    """A planned move: one command per control tick, the last one at the start pose."""

    # (K, D) robot commands in action_names order (base dims 0).
    commands: np.ndarray
    # Control period between two commands (s).
    dt: float
    # (D,) the target: the start pose on joint dims, 0 on base dims.
    goal: np.ndarray

    @property
    def duration_s(self) -> float:
        """Return how long the move takes (s)."""
        return len(self.commands) * self.dt


def start_goal(adapter: EmbodimentAdapter) -> np.ndarray:
    """
    Return the (D,) command of the robot's start pose (base dims 0).

    Raises:
        ValueError: the robot config has no start_pose.

    """
    pose = adapter.config.start_pose
    if pose is None:
        names = ', '.join(f'{j.name}: <position>' for j in adapter.config.joints)
        raise ValueError(
            f"Robot '{adapter.name}' ({adapter.config.source}) has no start_pose; add "
            f'"start_pose: {{{names}}}" (robot units, within the joint limits) to its config.')
    goal = np.zeros(adapter.dof)
    goal[:len(pose)] = pose  # joints come first in action_names, base dims after
    return goal


def plan_start_move(adapter: EmbodimentAdapter, measured: np.ndarray, *, dt: float,
                    velocity_scale: float = 1.0) -> StartMove:
    """
    Plan the synchronised move from the measured positions to the start pose.

    Args:
        adapter: the robot's adapter (start pose, limits, action order).
        measured: (D,) measured command (joint positions; base dims are ignored).
        dt: control period (s), one command per period.
        velocity_scale: fraction of each joint's max_velocity the move may reach, in (0, 1].

    Returns:
        The move; at least one command (the goal) even when the robot is already there.

    Raises:
        ValueError: no start pose, a measured vector of the wrong shape or with NaN/Inf, a
            non-positive dt, or a velocity_scale outside (0, 1].

    """
    goal = start_goal(adapter)
    start = np.asarray(measured, dtype=np.float64)
    if start.shape != (adapter.dof,):
        raise ValueError(
            f'Measured positions have shape {start.shape}; expected ({adapter.dof},) in the '
            f'order {list(adapter.action_names)}.')
    joints = ~np.asarray(adapter.is_velocity, dtype=bool)  # (D,) position dims
    bad = [n for n, ok in zip(adapter.action_names, np.isfinite(start) | ~joints) if not ok]
    if bad:
        raise ValueError(f'Measured positions of {bad} are not finite; the move to the start '
                         'pose needs fresh joint states.')
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f'dt must be a positive control period in seconds, got {dt!r}.')
    if not 0.0 < velocity_scale <= 1.0:
        raise ValueError(f'velocity_scale must be a fraction in (0, 1], got {velocity_scale!r}.')
    start = np.where(joints, start, 0.0)
    distance = np.abs(goal - start)  # (D,)
    speed = np.asarray(adapter.max_velocity, dtype=np.float64) * velocity_scale
    # The slowest joint at its limit sets the duration; the profile peaks at PEAK x average.
    duration = PROFILE_PEAK_SLOPE * float(np.max(np.where(joints, distance / speed, 0.0)))
    steps = max(1, math.ceil(duration / dt - 1e-9))
    u = np.arange(1, steps + 1) / steps  # (K,)
    commands = start + (goal - start) * smooth_profile(u)[:, None]  # (K, D)
    commands[-1] = goal  # exactly, without rounding
    commands[:, ~joints] = 0.0
    return StartMove(commands=commands, dt=float(dt), goal=goal)


class StartMover:
    """Hand out a planned move one command per control tick (used by the run's Session)."""

    def __init__(self, move: StartMove) -> None:
        """Start at the first command of ``move``."""
        self.move = move
        self._index = 0

    @property
    def progress(self) -> str:
        """Return 'sent/total' commands, for status reports."""
        return f'{self._index}/{len(self.move.commands)}'

    def next_command(self) -> np.ndarray | None:
        """Return the (D,) command of this tick, or None when the move is complete."""
        if self._index >= len(self.move.commands):
            return None
        command = self.move.commands[self._index]
        self._index += 1
        return command
