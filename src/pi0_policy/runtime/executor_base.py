"""
Base of the chunk executors: inbox, plan clock, latency tracking, progress and counters.

The strategies (``sync``, ``async``, ``ensemble``), ExecutionConfig, the strategy registry and
make_executor live in :mod:`pi0_policy.runtime.chunking`, which re-exports the public names of
this module.

Conventions shared by every strategy:

- Time is passed in explicitly (seconds, float, the clock of the observation stamps); nothing here
  reads a clock, so tests are deterministic.
- Action ``k`` of a chunk computed from an observation stamped ``obs_time`` is meant for
  ``obs_time + k / chunk_rate_hz`` (its *anchor* is ``obs_time``); ``chunk_rate_hz`` is the rate
  the policy's actions are spaced at (the robot config's ``control_rate_hz``), by default the
  control rate. The synchronous strategy re-anchors each chunk at the tick it starts on, because
  the robot waits. A chunk of H actions lasts ``H / chunk_rate_hz`` seconds (its last action is
  held for one chunk step).
- A *plan clock* gives the time the action of the current tick is meant for. It advances by
  exactly ``dt = 1 / control_rate_hz`` per returned action, so consecutive ticks move through the
  chunk without repeats or gaps under timer jitter; when it drifts more than ``max_tick_lag``
  ticks from ``now`` (missed ticks, a paused timer) it jumps to ``now`` and the actions whose
  time has passed are skipped.
- Sampling a chunk at a plan time: when ``chunk_rate_hz == control_rate_hz`` the tick takes the
  action nearest to it (ticks and actions share one grid up to a phase). Otherwise the tick
  interpolates linearly between the two actions around it (position semantics; also right for
  velocity dims), e.g. 20 Hz actions at 50 Hz ticks: positions 0, 0.4, 0.8, 1.2, ...
- Indices, ``execute_steps``, ``request_remaining``, ``horizon`` and ``ChunkProgress`` count chunk
  actions; the plan clock, ``max_tick_lag``, ``latency_margin_ticks`` and
  ``ExecutorStats.delay_ticks`` count control ticks.
- ``next_action(now)`` returns ``None`` when there is nothing valid to execute: the caller holds.
- Threading: ``add_chunk`` may be called from the inference thread while the control timer calls
  ``next_action`` / ``needs_inference``; a new chunk waits in a locked inbox and is taken at the
  next tick. ``needs_inference`` says that the executor wants a chunk from a fresh observation;
  the caller starts one only when none is in flight.
"""

import abc
from collections import deque
from dataclasses import dataclass
import math
import threading
from typing import ClassVar, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the config is only needed for annotations
    from pi0_policy.runtime.config import ExecutionConfig

# Axis letters: H = chunk length (actions per chunk), D = robot command dims.
ActionChunk = np.ndarray  # (H, D) robot units
RobotAction = np.ndarray  # (D,) robot units

# Nothing older than this is "the current observation": chunks are compared by obs_time.
_NO_TIME = -math.inf
# Extra observation keys of an RTC inference request (``ChunkExecutor.request_extras``): the
# current chunk's not-yet-executed actions (R, D) in robot units from the observation time on, the
# estimated inference delay d and the execution horizon s, both in chunk steps. A policy or server
# that does not know them ignores them and answers without guidance.
RTC_LEFTOVER_KEY = 'rtc_leftover'
RTC_DELAY_KEY = 'rtc_delay'
RTC_EXECUTE_KEY = 'rtc_execute_steps'

# Slack, in ticks, for float round-off when a duration is converted to a whole number of ticks.
_TICK_EPS = 1e-6
# Slack, in chunk steps, for float round-off of a tick time on the chunk's action grid: a tick
# within it of an action takes that action exactly.
_STEP_EPS = 1e-6


@dataclass(frozen=True)
class ChunkProgress:
    """Where execution stands, as of the last tick (for diagnostics and rviz previews)."""

    # Sequence number of the chunk the last action came from; -1 before the first action.
    sequence: int
    # Index in that chunk of the last action returned; -1 when none.
    index: int
    # Number of actions in that chunk (H); 0 when none.
    length: int
    # Seconds between that chunk's observation and the last tick; None when none.
    chunk_age: float | None
    # Actions of that chunk after the last one returned.
    remaining: int


@dataclass(frozen=True)
class ExecutorStats:
    """Counters since the last reset() and the current latency estimate."""

    # Chunks passed to add_chunk().
    chunks_received: int
    # Chunks discarded: older than the current observation, superseded, too late or too old.
    chunks_discarded: int
    # Chunks dropped for being older than max_chunk_age (async, ensemble): on arrival (those are
    # also in chunks_discarded) or while being executed. A growing count with a slow model means
    # max_chunk_age is shorter than the inference latency (use 'sync' or raise max_chunk_age).
    chunks_too_old: int
    # Actions of accepted chunks dropped because their time had passed on arrival.
    actions_dropped: int
    # Ticks the plan clock skipped after missed ticks.
    ticks_skipped: int
    # Ticks that returned None (the caller held).
    holds: int
    # Latency estimate (quantile of recent chunk delays), seconds; None before the first sample.
    latency: float | None
    # The estimate in control ticks, rounded up (the RTC delay d); 0 before the first sample.
    delay_ticks: int


@dataclass(frozen=True)
class GuidanceTarget:
    """The current plan seen from a new observation: the RTC guidance target Y and the delay d."""

    # Not-yet-executed actions of the current chunk; row i is meant for
    # start_time + i / chunk_rate_hz.
    actions: ActionChunk  # (R, D), R <= H, read-only
    # Time row 0 is meant for (the obs_time passed to guidance_target, up to half a chunk step).
    start_time: float
    # Estimated inference delay d in CHUNK STEPS (actions of the new chunk, 1 / chunk_rate_hz
    # each; equal to control ticks when chunk_rate_hz == control_rate_hz): the new chunk's first
    # d actions will lie in the past.
    delay_ticks: int
    # Sequence number of the chunk the rows come from.
    sequence: int


class AcceptedChunk:
    """An accepted chunk: read-only actions and the time its action 0 is meant for."""

    __slots__ = ('actions', 'obs_time', 'sequence', 'anchor', 'length')

    def __init__(self, actions: ActionChunk, obs_time: float, sequence: int) -> None:
        """Wrap checked (H, D) ``actions`` from the observation stamped ``obs_time``."""
        self.actions = actions  # (H, D)
        self.obs_time = obs_time
        self.sequence = sequence
        self.anchor = obs_time
        self.length = actions.shape[0]


class _LatencyTracker:
    """Quantile of recent chunk delays, cold start excluded; updated per chunk, not per tick."""

    def __init__(self, window: int, quantile: float, skip_first: int, rate_hz: float) -> None:
        self._delays: deque[float] = deque(maxlen=window)
        self._quantile = quantile
        self._to_skip = skip_first
        self._rate_hz = rate_hz
        self.estimate: float | None = None
        self.delay_ticks = 0

    def steps(self, rate_hz: float) -> int:
        """Return the estimate in periods of ``rate_hz``, rounded up; 0 before the first sample."""
        if self.estimate is None:
            return 0
        return math.ceil(self.estimate * rate_hz - _TICK_EPS)

    def add(self, delay: float) -> None:
        if self._to_skip > 0:
            self._to_skip -= 1
            return
        self._delays.append(max(delay, 0.0))
        ordered = sorted(self._delays)
        self.estimate = ordered[math.ceil(self._quantile * len(ordered)) - 1]
        self.delay_ticks = math.ceil(self.estimate * self._rate_hz - _TICK_EPS)


class ChunkExecutor(abc.ABC):
    """Base of the strategies: inbox, plan clock, latency tracking, progress and counters."""

    # Registry name, set by @register_strategy.
    name: ClassVar[str] = ''

    def __init__(self, config: 'ExecutionConfig') -> None:
        """Create an empty executor for ``config`` (use make_executor to pick by name)."""
        self._config = config
        self._dt = config.dt
        self._rate = config.control_rate_hz
        # Spacing of the actions in a chunk; equal rates take the nearest action, else interpolate.
        self._chunk_rate = config.resolved_chunk_rate_hz
        self._chunk_dt = config.chunk_dt
        self._interpolate = self._chunk_rate != self._rate
        self._lock = threading.Lock()
        self._latency = _LatencyTracker(config.latency_window, config.latency_quantile,
                                        config.latency_skip_first, config.control_rate_hz)
        self._dim: int | None = None
        self.reset()

    @property
    def config(self) -> 'ExecutionConfig':
        """Return the configuration."""
        return self._config

    # Fields fixed for the executor's life (the rest are tunables update_config may change).
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = (
        'strategy', 'control_rate_hz', 'chunk_rate_hz', 'horizon', 'latency_window',
        'latency_quantile', 'latency_skip_first')

    def update_config(self, config: 'ExecutionConfig') -> None:
        """
        Use new tunables (execute_steps, request_remaining, ...) from the next tick on.

        Raises:
            ValueError: A field of FIXED_FIELDS differs; those need a new executor.

        """
        changed = [name for name in self.FIXED_FIELDS
                   if getattr(config, name) != getattr(self._config, name)]
        if changed:
            raise ValueError(f'ExecutionConfig fields {changed} cannot change on a running '
                             'executor; build a new one with make_executor().')
        self._config = config
        self._config_updated()

    def _config_updated(self) -> None:
        """Drop what a strategy derived from the tunables (hook; nothing by default)."""

    def reset(self) -> None:
        """Forget every chunk, the plan clock and the counters (the latency history is kept)."""
        with self._lock:
            self._inbox: list[AcceptedChunk] = []
            self._newest_obs_time = _NO_TIME
        self._plan_origin: float | None = None
        self._plan_step = 0
        self._last: tuple[AcceptedChunk, int, float] | None = None  # chunk, index, tick time
        self._received = self._discarded = self._dropped = self._skipped = self._holds = 0
        self._too_old_count = 0
        self._reset_strategy()

    def add_chunk(self, actions: ActionChunk, obs_time: float, sequence: int) -> bool:
        """
        Queue a chunk computed from the observation stamped ``obs_time`` (thread-safe).

        Args:
            actions: (H, D) finite actions in robot units; copied.
            obs_time: stamp of the observation the chunk was computed from, seconds.
            sequence: the caller's chunk counter (reported in progress).

        Returns:
            False if the chunk was discarded because it is not newer than the newest queued one.

        Raises:
            ValueError: wrong shape, a dimension change, a horizon mismatch or NaN/Inf values.

        """
        chunk = AcceptedChunk(self._checked(actions), float(obs_time), int(sequence))
        with self._lock:
            self._received += 1
            if chunk.obs_time <= self._newest_obs_time:
                self._discarded += 1
                return False
            self._newest_obs_time = chunk.obs_time
            self._inbox.append(chunk)
        return True

    @abc.abstractmethod
    def next_action(self, now: float) -> RobotAction | None:
        """Return the (D,) action for the tick at ``now``, or None when the caller must hold."""

    @abc.abstractmethod
    def needs_inference(self, now: float) -> bool:
        """Return True when the executor wants a chunk from an observation taken now."""

    @property
    def progress(self) -> ChunkProgress:
        """Return where execution stands as of the last returned action."""
        if self._last is None:
            return ChunkProgress(sequence=-1, index=-1, length=0, chunk_age=None, remaining=0)
        chunk, index, tick = self._last
        return ChunkProgress(sequence=chunk.sequence, index=index, length=chunk.length,
                             chunk_age=tick - chunk.obs_time,
                             remaining=chunk.length - index - 1)

    @property
    def stats(self) -> ExecutorStats:
        """Return the counters and the latency estimate."""
        return ExecutorStats(
            chunks_received=self._received, chunks_discarded=self._discarded,
            chunks_too_old=self._too_old_count, actions_dropped=self._dropped,
            ticks_skipped=self._skipped, holds=self._holds, latency=self._latency.estimate,
            delay_ticks=self._latency.delay_ticks)

    def guidance_target(self, obs_time: float) -> GuidanceTarget | None:
        """
        Return the current chunk's actions from ``obs_time`` on, for Real-Time Chunking.

        Call it when an inference starts from the observation stamped ``obs_time``; row 0 of the
        result is aligned with row 0 of the chunk that inference will produce (rows are chunk
        steps of ``1 / chunk_rate_hz``; ``delay_ticks`` is in chunk steps too).

        Returns:
            None when there is no current chunk or it ends before ``obs_time``.

        """
        chunk = self._plan_chunk()
        if chunk is None:
            return None
        start = max(self._nearest_index(chunk, obs_time), 0)
        if start >= chunk.length:
            return None
        return GuidanceTarget(actions=chunk.actions[start:],
                              start_time=chunk.anchor + start * self._chunk_dt,
                              delay_ticks=self._latency.steps(self._chunk_rate),
                              sequence=chunk.sequence)

    def request_extras(self, obs_time: float) -> dict[str, object]:
        """
        Return extra keys for the inference request of an observation stamped ``obs_time``.

        Empty except for Real-Time Chunking (``RTC_*_KEY``); the caller merges them into the
        observation it passes to the policy.
        """
        return {}

    # -- for the strategies -------------------------------------------------------------------

    @abc.abstractmethod
    def _reset_strategy(self) -> None:
        """Forget the strategy's chunks."""

    @abc.abstractmethod
    def _plan_chunk(self) -> AcceptedChunk | None:
        """Return the chunk whose remaining actions are the current plan."""

    def _checked(self, actions: ActionChunk) -> ActionChunk:
        array = np.array(actions, dtype=np.float64)  # copy: the caller may reuse its buffer
        if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(f'An action chunk must be a non-empty (H, D) array; got shape '
                             f'{array.shape}. Pass the policy output for one observation.')
        horizon = self._config.horizon
        if horizon is not None and array.shape[0] != horizon:
            raise ValueError(f'Action chunk has {array.shape[0]} actions but '
                             f'ExecutionConfig.horizon={horizon}; fix the horizon setting.')
        if self._dim is not None and array.shape[1] != self._dim:
            raise ValueError(f'Action chunk has {array.shape[1]} dims but earlier chunks had '
                             f'{self._dim}; one executor serves one robot layout.')
        if not np.isfinite(array).all():
            rows = np.flatnonzero(~np.isfinite(array).all(axis=1)).tolist()
            raise ValueError(f'Action chunk contains NaN/Inf in rows {rows}; the policy output '
                             'is invalid, so the chunk is rejected (hold and re-infer).')
        self._dim = array.shape[1]
        array.flags.writeable = False
        return array

    def _take_inbox(self) -> list[AcceptedChunk]:
        # Unlocked emptiness check keeps the common tick lock-free; list swaps are atomic.
        if not self._inbox:
            return []
        with self._lock:
            taken, self._inbox = self._inbox, []
        return taken

    def _plan_time(self, now: float) -> float:
        """Return the time the action of this tick is meant for (re-synchronised if drifting)."""
        if self._plan_origin is not None:
            planned = self._plan_origin + self._plan_step * self._dt
            lag = (now - planned) * self._rate
            if abs(lag) <= self._config.max_tick_lag:
                return planned
            if lag > 0:
                self._skipped += math.floor(lag + 0.5)
        self._plan_origin = now
        self._plan_step = 0
        return now

    def _peek_plan_time(self, now: float) -> float:
        """Return what _plan_time(now) would return, without changing state."""
        if self._plan_origin is not None:
            planned = self._plan_origin + self._plan_step * self._dt
            if abs(now - planned) * self._rate <= self._config.max_tick_lag:
                return planned
        return now

    def _nearest_index(self, chunk: AcceptedChunk, time: float) -> int:
        """Return the index of the action of ``chunk`` nearest to ``time``."""
        return math.floor((time - chunk.anchor) * self._chunk_rate + 0.5)

    def _index(self, chunk: AcceptedChunk, time: float) -> int:
        """
        Return the chunk step ``time`` falls in (< 0: before the chunk, >= H: after it).

        Equal rates: the nearest action. Otherwise the action at or before ``time``; the tick
        then interpolates from it towards the next one (see _sample).
        """
        if not self._interpolate:
            return self._nearest_index(chunk, time)
        return math.floor((time - chunk.anchor) * self._chunk_rate + _STEP_EPS)

    def _sample(self, chunk: AcceptedChunk, index: int, time: float) -> RobotAction:
        """Return the (D,) action of ``chunk`` at ``time``, which falls in step ``index``."""
        actions = chunk.actions  # (H, D)
        if not self._interpolate:
            return actions[index]  # read-only view, no copy
        fraction = (time - chunk.anchor) * self._chunk_rate - index  # in [-eps, 1 - eps)
        if fraction <= _STEP_EPS or index + 1 >= chunk.length:
            return actions[index]  # on an action, or holding the last one for its step
        return actions[index] + fraction * (actions[index + 1] - actions[index])

    def _record(self, chunk: AcceptedChunk, index: int, now: float) -> None:
        """Advance the plan clock and remember where execution stands."""
        self._plan_step += 1
        self._last = (chunk, index, now)

    def _emit(self, chunk: AcceptedChunk, index: int, now: float, time: float) -> RobotAction:
        """Record the tick and return the chunk's action for plan time ``time``."""
        self._record(chunk, index, now)
        return self._sample(chunk, index, time)

    def _hold(self) -> None:
        self._holds += 1
        self._plan_origin = None  # the next chunk starts from the wall clock
        return None

    def _too_old(self, chunk: AcceptedChunk, now: float) -> bool:
        return now - chunk.obs_time > self._config.max_chunk_age

    def _remaining_after(self, chunk: AcceptedChunk, now: float) -> int:
        """Return how many actions of ``chunk`` remain from the next tick's plan time on."""
        return chunk.length - max(self._index(chunk, self._peek_plan_time(now)), 0)

    def _steps_to_ticks(self, steps: int) -> float:
        """Convert a number of chunk steps to control ticks (exact when the rates are equal)."""
        return steps * self._rate / self._chunk_rate
