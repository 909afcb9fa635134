"""
Make every per-tick command safe: joint limits, a rate limit per tick, holds, never NaN/Inf.

Command dims follow the adapter's ``action_names`` (joints, then base dims). Position dims are
clamped to ``[lower, upper]`` and may move at most ``max_velocity * dt`` per tick relative to the
last command (the first command is relative to the measured positions). Velocity dims (a mobile
base, ``is_velocity``) are clamped to ``|v| <= max_velocity`` and ``[lower, upper]``, may change at
most ``max_acceleration * dt`` per tick when an acceleration limit is given, and on hold ramp down
to zero at that same rate (nav2 velocity_smoother semantics: speeding up and slowing down alike);
``stop`` zeroes them at once (the last command a node sends before it goes away).
"""

from dataclasses import dataclass, field
import enum
import math
from typing import ClassVar

import numpy as np

RobotAction = np.ndarray  # (D,) robot units, over the adapter's action_names


class HoldReason(enum.Enum):
    """Why a tick holds instead of executing a policy action."""

    # The action (or the measured reference) contained NaN or Inf.
    NON_FINITE = 'non-finite action'
    # The chunk executor had nothing valid for this tick.
    NO_ACTION = 'no action for this tick'
    # An input (camera, joint state, ...) is older than its max_age or missing.
    STALE_INPUT = 'stale input'
    # The policy failed to produce a chunk.
    INFERENCE_FAILURE = 'inference failure'
    # Commanding is switched off (enable switch, deactivated node).
    DISABLED = 'disabled'
    # No command yet and no finite measured positions to start from.
    NO_REFERENCE = 'no measured positions to start from'


class ClampReason(enum.Enum):
    """Why a command dim differs from the requested action."""

    # Outside [lower, upper] (or |v| > max_velocity for a velocity dim).
    LIMIT = 'limit'
    # The change per tick exceeded max_velocity * dt (max_acceleration * dt for a velocity dim).
    RATE = 'rate'


def _as_tuple(values: object, name: str, *, kind: type = float) -> tuple:
    try:
        array = np.asarray(values, dtype=np.float64 if kind is float else bool)
    except (TypeError, ValueError) as e:
        raise TypeError(f'SafetyConfig.{name} must be a sequence of {kind.__name__}; '
                        f'got {values!r}.') from e
    if array.ndim != 1:
        raise ValueError(f'SafetyConfig.{name} must be one-dimensional (one value per command '
                         f'dim); got shape {array.shape}.')
    return tuple(kind(v) for v in array)


@dataclass(frozen=True)
class SafetyConfig:
    """Limits of the command dims (sequences or arrays are accepted and stored as tuples)."""

    # Lower limit per command dim (rad, m; m/s or rad/s for velocity dims); -inf for none.
    lower: tuple[float, ...]
    # Upper limit per command dim, same units; +inf for none.
    upper: tuple[float, ...]
    # Position dims: maximum speed (units/s), so a change per tick <= max_velocity * dt.
    # Velocity dims: maximum |command|.
    max_velocity: tuple[float, ...]
    # True for dims commanded as velocities (base dims): zero on hold, no position rate limit.
    is_velocity: tuple[bool, ...]
    # Control period in seconds (1 / control_rate_hz).
    dt: float
    # Velocity dims only: maximum change of the command per second (units/s^2); None for none.
    max_acceleration: tuple[float, ...] | None = None
    # Names of the command dims, for reports; empty to report indices only.
    names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        """Coerce sequences to tuples and check shapes and values; errors name the values."""
        for name in ('lower', 'upper', 'max_velocity'):
            object.__setattr__(self, name, _as_tuple(getattr(self, name), name))
        object.__setattr__(self, 'is_velocity',
                           _as_tuple(self.is_velocity, 'is_velocity', kind=bool))
        if self.max_acceleration is not None:
            object.__setattr__(self, 'max_acceleration',
                               _as_tuple(self.max_acceleration, 'max_acceleration'))
        object.__setattr__(self, 'names', tuple(str(n) for n in self.names))
        dims = len(self.lower)
        if dims == 0:
            raise ValueError('SafetyConfig.lower is empty; expected one limit per command dim.')
        for name in ('upper', 'max_velocity', 'is_velocity', 'max_acceleration', 'names'):
            value = getattr(self, name)
            if value is not None and not (name == 'names' and not value) and len(value) != dims:
                raise ValueError(f'SafetyConfig.{name} has {len(value)} entries but lower has '
                                 f'{dims}; give one entry per command dim.')
        if not (isinstance(self.dt, (int, float)) and math.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f'SafetyConfig.dt={self.dt!r} must be a positive number of seconds '
                             '(1 / control_rate_hz).')
        for i in range(dims):
            label = self.label(i)
            low, high = self.lower[i], self.upper[i]
            if math.isnan(low) or math.isnan(high) or not low <= high:
                raise ValueError(f'SafetyConfig limits of {label}: lower={low} and upper={high} '
                                 'must be numbers with lower <= upper.')
            speed = self.max_velocity[i]
            if not (math.isfinite(speed) and speed > 0):
                raise ValueError(f'SafetyConfig.max_velocity of {label} is {speed}; expected a '
                                 'finite positive speed (units/s).')
            if self.max_acceleration is not None:
                accel = self.max_acceleration[i]
                if not accel > 0:
                    raise ValueError(f'SafetyConfig.max_acceleration of {label} is {accel}; '
                                     'expected a positive value (inf for no limit).')

    def label(self, dim: int) -> str:
        """Return the name of command dim ``dim`` (or 'dim <i>' without names)."""
        return self.names[dim] if self.names else f'dim {dim}'


@dataclass(frozen=True)
class SafetyReport:
    """What the filter did to one command (for diagnostics)."""

    # True when the command is the hold command rather than a (clamped) policy action.
    held: bool
    # Why it held; None when it did not.
    hold_reason: HoldReason | None
    # Dims changed by the position / velocity limits.
    limit_clamped: tuple[int, ...]
    # Dims changed by the per-tick rate limit.
    rate_limited: tuple[int, ...]
    # Dims of the action that were NaN or Inf.
    non_finite: tuple[int, ...]
    # Empty: no dims, reused for the common case.
    NONE: ClassVar[tuple[int, ...]] = ()

    @property
    def clamped(self) -> bool:
        """Return True when any dim was clamped by a limit or the rate limit."""
        return bool(self.limit_clamped or self.rate_limited)

    def describe(self, config: SafetyConfig) -> str:
        """Return a one-line summary naming the dims, e.g. 'rate: joint1, joint2'."""
        parts = []
        if self.held:
            parts.append(f'hold ({self.hold_reason.value})')
        for reason, dims in ((ClampReason.LIMIT, self.limit_clamped),
                             (ClampReason.RATE, self.rate_limited),
                             (HoldReason.NON_FINITE, self.non_finite)):
            if dims:
                parts.append(f'{reason.value}: ' + ', '.join(config.label(d) for d in dims))
        return '; '.join(parts) if parts else 'ok'


@dataclass(frozen=True)
class SafetyStats:
    """Counters since the filter was created or reset."""

    # Commands returned (filtered and held).
    commands: int
    # Commands with at least one clamped dim.
    clamped: int
    # Commands that were holds.
    holds: int
    # Actions rejected for NaN/Inf.
    non_finite: int


class SafetyFilter:
    """Turn policy actions into safe commands; pure numpy, a few microseconds per call."""

    def __init__(self, config: SafetyConfig) -> None:
        """Prepare the limit arrays of ``config``; the first command needs measured positions."""
        self._prepare(config)
        self._last: np.ndarray | None = None
        self.reset()

    def update(self, config: SafetyConfig) -> None:
        """
        Use new limits from the next command on, keeping the last command (a live change).

        Raises:
            ValueError: ``config`` has another number of dims or other velocity dims.

        """
        if config.is_velocity != self._config.is_velocity:
            raise ValueError(f'SafetyFilter.update: is_velocity {config.is_velocity} differs from '
                             f'{self._config.is_velocity}; build a new filter for another robot.')
        self._prepare(config)

    def _prepare(self, config: SafetyConfig) -> None:
        """Compute the limit arrays of ``config``."""
        self._config = config
        velocity = np.array(config.is_velocity, dtype=bool)
        lower = np.array(config.lower)
        upper = np.array(config.upper)
        speed = np.array(config.max_velocity)
        self._velocity = velocity
        self._position = ~velocity
        # Velocity dims: |v| <= max_velocity as well as [lower, upper].
        self._lower = np.where(velocity, np.maximum(lower, -speed), lower)
        self._upper = np.where(velocity, np.minimum(upper, speed), upper)
        accel = (np.full(speed.shape, np.inf) if config.max_acceleration is None
                 else np.array(config.max_acceleration))
        self._step = np.where(velocity, accel, speed) * config.dt  # max change per tick
        self._neg_step = -self._step
        self._dims = velocity.size

    @property
    def config(self) -> SafetyConfig:
        """Return the configuration."""
        return self._config

    @property
    def last_command(self) -> RobotAction | None:
        """Return a copy of the last command returned, or None before the first."""
        return None if self._last is None else self._last.copy()

    @property
    def stats(self) -> SafetyStats:
        """Return the counters."""
        return SafetyStats(commands=self._commands, clamped=self._clamped, holds=self._holds,
                           non_finite=self._non_finite)

    @property
    def stopped(self) -> bool:
        """Return True when no velocity dim was last commanded non-zero."""
        return self._last is None or not np.any(self._last[self._velocity])

    def reset(self) -> None:
        """Forget the last command (the next one is relative to the measured positions)."""
        self._last = None
        self._commands = self._clamped = self._holds = self._non_finite = 0

    # The contract names this method filter (it shadows the builtin only as an attribute).
    def filter(self, action: RobotAction,  # noqa: A003
               measured: RobotAction | None = None) -> tuple[RobotAction | None, SafetyReport]:
        """
        Return the safe command for ``action`` and a report of what was changed.

        Args:
            action: (D,) requested command in robot units.
            measured: (D,) measured positions; needed for the first command after construction
                or reset(), ignored afterwards. Values of velocity dims are ignored: the base is
                taken to start from rest.

        Returns:
            (command (D,) or None, report). A NaN/Inf action gives the hold command; without a
            reference (first command, ``measured`` missing or NaN) the filter holds with
            HoldReason.NO_REFERENCE and the command is None (see hold()).

        Raises:
            ValueError: wrong shape of ``action`` or ``measured``.

        """
        action = self._vector(action, 'action')
        finite = np.isfinite(action)
        if not finite.all():
            self._non_finite += 1
            return self.hold(HoldReason.NON_FINITE, measured,
                             non_finite=tuple(np.flatnonzero(~finite).tolist()))
        reference = self._last
        if reference is None:
            reference = self._reference(measured)
            if reference is None:
                return self.hold(HoldReason.NO_REFERENCE)
        # np.minimum / np.maximum: a few times cheaper than np.clip on (D,) arrays.
        target = np.minimum(np.maximum(action, self._lower), self._upper)
        change = target - reference
        limited = np.minimum(np.maximum(change, self._neg_step), self._step)
        command = reference + limited
        # Clamp again: a reference outside the limits (measured) must not leak into the command.
        np.minimum(np.maximum(command, self._lower, out=command), self._upper, out=command)
        limit_dims = SafetyReport.NONE
        rate_dims = SafetyReport.NONE
        limit_hit = target != action
        if limit_hit.any():
            limit_dims = tuple(np.flatnonzero(limit_hit).tolist())
        rate_hit = limited != change
        if rate_hit.any():
            rate_dims = tuple(np.flatnonzero(rate_hit).tolist())
        self._last = command
        self._commands += 1
        if limit_dims or rate_dims:
            self._clamped += 1
        return command.copy(), SafetyReport(held=False, hold_reason=None,
                                            limit_clamped=limit_dims, rate_limited=rate_dims,
                                            non_finite=SafetyReport.NONE)

    def hold(self, reason: HoldReason, measured: RobotAction | None = None, *,
             non_finite: tuple[int, ...] = ()) -> tuple[RobotAction | None, SafetyReport]:
        """
        Return the hold command: the last command's positions; velocity dims ramp toward zero.

        Velocity dims slow down by at most ``max_acceleration * dt`` per call (zero at once
        without an acceleration limit). Before any command, the measured positions (clamped to
        the limits) are held. When neither is known (no command yet and ``measured`` missing or
        NaN) the command is None: publish nothing for position dims and a zero velocity for the
        base.

        Args:
            reason: why the tick holds (reported).
            measured: (D,) measured positions, used only before the first command.
            non_finite: dims of a rejected action that were NaN/Inf (reported).

        Returns:
            (command (D,) or None, report with held=True).

        """
        reference = self._last
        if reference is None:
            reference = self._reference(measured)
        command = None
        if reference is not None:
            # reference is the last command (or measured positions with zero velocities).
            slowed = reference - np.minimum(np.maximum(reference, self._neg_step), self._step)
            held = np.clip(np.where(self._velocity, slowed, reference), self._lower, self._upper)
            self._last = held
            command = held.copy()
        self._commands += 1
        self._holds += 1
        return command, SafetyReport(held=True, hold_reason=reason,
                                     limit_clamped=SafetyReport.NONE,
                                     rate_limited=SafetyReport.NONE, non_finite=non_finite)

    def stop(self, reason: HoldReason) -> tuple[RobotAction | None, SafetyReport]:
        """Return the hold command with every velocity dim zero at once (a final command)."""
        if self._last is not None:
            self._last = np.where(self._velocity, 0.0, self._last)
        return self.hold(reason)

    def _vector(self, values: RobotAction, name: str) -> np.ndarray:
        array = np.asarray(values, dtype=np.float64)
        if array.shape != (self._dims,):
            raise ValueError(f'SafetyFilter: {name} has shape {array.shape}, expected '
                             f'({self._dims},) (one value per command dim of the robot).')
        return array

    def _reference(self, measured: RobotAction | None) -> np.ndarray | None:
        """Return the reference for the first command: measured positions, zero velocities."""
        if measured is None:
            return None
        measured = self._vector(measured, 'measured')
        reference = np.where(self._velocity, 0.0, measured)
        return reference if np.isfinite(reference).all() else None
