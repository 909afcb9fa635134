"""
Turn action chunks into one action per control tick (sync, async latency-aware, ACT ensembling).

Conventions shared by every strategy:

- Time is passed in explicitly (seconds, float, the clock of the observation stamps); nothing here
  reads a clock, so tests are deterministic.
- Action ``k`` of a chunk computed from an observation stamped ``obs_time`` is meant for
  ``obs_time + k * dt`` with ``dt = 1 / control_rate_hz`` (its *anchor* is ``obs_time``). The
  synchronous strategy re-anchors each chunk at the tick it starts on, because the robot waits.
- A *plan clock* gives the time the action of the current tick is meant for. It advances by
  exactly ``dt`` per returned action, so consecutive ticks take consecutive chunk indices (no
  repeats, no gaps under timer jitter); when it drifts more than ``max_tick_lag`` ticks from
  ``now`` (missed ticks, a paused timer) it jumps to ``now`` and the actions whose time has passed
  are skipped.
- ``next_action(now)`` returns ``None`` when there is nothing valid to execute: the caller holds.
- Threading: ``add_chunk`` may be called from the inference thread while the control timer calls
  ``next_action`` / ``needs_inference``; a new chunk waits in a locked inbox and is taken at the
  next tick. ``needs_inference`` says that the executor wants a chunk from a fresh observation;
  the caller starts one only when none is in flight.

Real-Time Chunking (Black et al. 2025) fits as another registered strategy: it executes like
``async`` (stitching by plan time already drops the first ``d`` actions of a new chunk) and, when
an inference starts, reads ``guidance_target(obs_time)``: the not-yet-executed actions of the
current chunk aligned so that row 0 is meant for ``obs_time`` (the guidance target Y, to be
right-padded to H in model space by the sampler, never with zeros) and ``delay_ticks`` (the
estimated delay d).
"""

import abc
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
import difflib
import math
import threading
from typing import ClassVar, TypeVar

import numpy as np
from typing_extensions import override

# Axis letters: H = chunk length (actions per chunk), D = robot command dims.
ActionChunk = np.ndarray  # (H, D) robot units
RobotAction = np.ndarray  # (D,) robot units

# Nothing older than this is "the current observation": chunks are compared by obs_time.
_NO_TIME = -math.inf
# Slack, in ticks, for float round-off when a duration is converted to a whole number of ticks.
_TICK_EPS = 1e-6
_STRATEGIES: dict[str, type['ChunkExecutor']] = {}
_E = TypeVar('_E', bound='ChunkExecutor')


def register_strategy(name: str) -> Callable[[type[_E]], type[_E]]:
    """
    Register a ChunkExecutor subclass under ``name`` (class decorator).

    Args:
        name: the value of ``ExecutionConfig.strategy`` that selects the class.

    Returns:
        The decorator; it sets ``cls.name`` and returns the class unchanged.

    Raises:
        ValueError: if ``name`` is already registered.

    """
    def decorator(cls: type[_E]) -> type[_E]:
        if name in _STRATEGIES:
            raise ValueError(
                f'Chunk execution strategy {name!r} is already registered by '
                f'{_STRATEGIES[name].__name__}; register {cls.__name__} under another name.')
        cls.name = name
        _STRATEGIES[name] = cls
        return cls
    return decorator


def available_strategies() -> tuple[str, ...]:
    """Return the registered strategy names, sorted."""
    return tuple(sorted(_STRATEGIES))


def get_strategy(name: str) -> type['ChunkExecutor']:
    """
    Return the executor class registered under ``name``.

    Raises:
        ValueError: for an unknown name; the message lists the available ones and the closest.

    """
    if name in _STRATEGIES:
        return _STRATEGIES[name]
    available = available_strategies()
    close = difflib.get_close_matches(str(name), available, n=1)
    hint = f' Did you mean {close[0]!r}?' if close else ''
    raise ValueError(
        f'Unknown chunk execution strategy {name!r}; available: {", ".join(available)}.{hint} '
        f'Set ExecutionConfig.strategy to one of them.')


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'ExecutionConfig.{name} must be an int, got {value!r} '
                        f'({type(value).__name__}).')
    if value < minimum:
        raise ValueError(f'ExecutionConfig.{name}={value} is too small; expected >= {minimum}.')


@dataclass(frozen=True)
class ExecutionConfig:
    """Settings of chunk execution (one frozen snapshot, validated on construction)."""

    # Strategy name: 'sync', 'async' or 'ensemble' (see available_strategies()).
    strategy: str = 'async'
    # Rate of next_action() calls, Hz; dt = 1 / control_rate_hz separates consecutive actions.
    control_rate_hz: float = 50.0
    # Chunk length H the policy produces, when known; every chunk and, for sync, execute_steps
    # are checked against it.
    horizon: int | None = None
    # sync: actions executed from each chunk before the robot holds and the next inference starts.
    execute_steps: int = 25
    # async: request the next inference once at most this many actions are left in the chunk
    # (>= H requests on every tick).
    request_remaining: int = 25
    # async: ticks added to the latency estimate; the request also fires once the actions left
    # are <= estimated delay (ticks) + this margin, so the next chunk lands in time.
    latency_margin_ticks: int = 2
    # Number of recent chunk delays (tick that took the chunk - obs_time) behind the estimate.
    latency_window: int = 20
    # Quantile of the recent delays used as the latency estimate; 1.0 takes the maximum.
    latency_quantile: float = 1.0
    # Delays ignored after construction (cold start: the first inference allocates / compiles).
    latency_skip_first: int = 1
    # ensemble: ACT coefficient m of w_j = exp(-m * j), j = 0 the oldest chunk; m > 0 is smoother.
    ensemble_coefficient: float = 0.01
    # Oldest a chunk may be (seconds since its observation) for an action to be taken from it.
    max_chunk_age: float = 2.0
    # Plan-clock tolerance, ticks: drifting further from now re-synchronises (skips) the plan.
    max_tick_lag: float = 1.5

    def __post_init__(self) -> None:
        """Check the fields and their combinations; errors name the values involved."""
        get_strategy(self.strategy)
        if not (math.isfinite(self.control_rate_hz) and self.control_rate_hz > 0):
            raise ValueError(f'ExecutionConfig.control_rate_hz={self.control_rate_hz!r} must be a '
                             'finite positive rate in Hz (e.g. 50.0).')
        for name, minimum in (('execute_steps', 1), ('request_remaining', 0),
                              ('latency_margin_ticks', 0), ('latency_window', 1),
                              ('latency_skip_first', 0)):
            _check_int(name, getattr(self, name), minimum)
        if self.horizon is not None:
            _check_int('horizon', self.horizon, 1)
            if self.strategy == 'sync' and self.execute_steps > self.horizon:
                raise ValueError(
                    f'ExecutionConfig.execute_steps={self.execute_steps} exceeds '
                    f'horizon={self.horizon}: a chunk has only {self.horizon} actions; '
                    f'set execute_steps <= {self.horizon}.')
        if not 0.0 < self.latency_quantile <= 1.0:
            raise ValueError(f'ExecutionConfig.latency_quantile={self.latency_quantile!r} must be '
                             'in (0, 1]; use 1.0 for the maximum of recent delays.')
        if not math.isfinite(self.ensemble_coefficient):
            raise ValueError(f'ExecutionConfig.ensemble_coefficient={self.ensemble_coefficient!r} '
                             'must be finite (ACT uses 0.01).')
        if not self.max_tick_lag > 1.0:
            raise ValueError(f'ExecutionConfig.max_tick_lag={self.max_tick_lag!r} must exceed 1 '
                             'tick, or the plan clock re-synchronises on ordinary jitter.')
        sync_span = self.execute_steps / self.control_rate_hz
        if not self.max_chunk_age > 0:
            raise ValueError(f'ExecutionConfig.max_chunk_age={self.max_chunk_age!r} must be a '
                             'positive number of seconds.')
        if self.strategy == 'sync' and self.max_chunk_age <= sync_span:
            raise ValueError(
                f'ExecutionConfig.max_chunk_age={self.max_chunk_age} s is not longer than '
                f'execute_steps={self.execute_steps} at control_rate_hz={self.control_rate_hz} '
                f'({sync_span:.3f} s): no chunk could be executed to the end; raise max_chunk_age '
                'or lower execute_steps.')

    @property
    def dt(self) -> float:
        """Return the control period in seconds."""
        return 1.0 / self.control_rate_hz


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

    # Not-yet-executed actions of the current chunk; row i is meant for start_time + i * dt.
    actions: ActionChunk  # (R, D), R <= H, read-only
    # Time row 0 is meant for (the obs_time passed to guidance_target, up to half a tick).
    start_time: float
    # Estimated inference delay d in ticks: the new chunk's first d actions will lie in the past.
    delay_ticks: int
    # Sequence number of the chunk the rows come from.
    sequence: int


class _Chunk:
    """An accepted chunk: read-only actions and the time its action 0 is meant for."""

    __slots__ = ('actions', 'obs_time', 'sequence', 'anchor', 'length')

    def __init__(self, actions: ActionChunk, obs_time: float, sequence: int) -> None:
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

    def __init__(self, config: ExecutionConfig) -> None:
        """Create an empty executor for ``config`` (use make_executor to pick by name)."""
        self._config = config
        self._dt = config.dt
        self._rate = config.control_rate_hz
        self._lock = threading.Lock()
        self._latency = _LatencyTracker(config.latency_window, config.latency_quantile,
                                        config.latency_skip_first, config.control_rate_hz)
        self._dim: int | None = None
        self.reset()

    @property
    def config(self) -> ExecutionConfig:
        """Return the configuration."""
        return self._config

    def reset(self) -> None:
        """Forget every chunk, the plan clock and the counters (the latency history is kept)."""
        with self._lock:
            self._inbox: list[_Chunk] = []
            self._newest_obs_time = _NO_TIME
        self._plan_origin: float | None = None
        self._plan_step = 0
        self._last: tuple[_Chunk, int, float] | None = None  # chunk, index, tick time
        self._received = self._discarded = self._dropped = self._skipped = self._holds = 0
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
        chunk = _Chunk(self._checked(actions), float(obs_time), int(sequence))
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
            actions_dropped=self._dropped, ticks_skipped=self._skipped, holds=self._holds,
            latency=self._latency.estimate, delay_ticks=self._latency.delay_ticks)

    def guidance_target(self, obs_time: float) -> GuidanceTarget | None:
        """
        Return the current chunk's actions from ``obs_time`` on, for Real-Time Chunking.

        Call it when an inference starts from the observation stamped ``obs_time``; row 0 of the
        result is aligned with row 0 of the chunk that inference will produce.

        Returns:
            None when there is no current chunk or it ends before ``obs_time``.

        """
        chunk = self._plan_chunk()
        if chunk is None:
            return None
        start = max(self._index(chunk, obs_time), 0)
        if start >= chunk.length:
            return None
        return GuidanceTarget(actions=chunk.actions[start:],
                              start_time=chunk.anchor + start * self._dt,
                              delay_ticks=self._latency.delay_ticks, sequence=chunk.sequence)

    # -- for the strategies -------------------------------------------------------------------

    @abc.abstractmethod
    def _reset_strategy(self) -> None:
        """Forget the strategy's chunks."""

    @abc.abstractmethod
    def _plan_chunk(self) -> _Chunk | None:
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

    def _take_inbox(self) -> list[_Chunk]:
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

    def _index(self, chunk: _Chunk, time: float) -> int:
        """Return the index of the action of ``chunk`` nearest to ``time``."""
        return math.floor((time - chunk.anchor) * self._rate + 0.5)

    def _emit(self, chunk: _Chunk, index: int, now: float) -> RobotAction:
        self._plan_step += 1
        self._last = (chunk, index, now)
        return chunk.actions[index]  # read-only view, no copy

    def _hold(self) -> None:
        self._holds += 1
        self._plan_origin = None  # the next chunk starts from the wall clock
        return None

    def _too_old(self, chunk: _Chunk, now: float) -> bool:
        return now - chunk.obs_time > self._config.max_chunk_age

    def _remaining_after(self, chunk: _Chunk, now: float) -> int:
        """Return how many actions of ``chunk`` remain from the next tick's plan time on."""
        return chunk.length - max(self._index(chunk, self._peek_plan_time(now)), 0)


@register_strategy('sync')
class SyncExecutor(ChunkExecutor):
    """
    Execute ``execute_steps`` actions of a chunk, then hold until the next chunk arrives.

    The robot pauses while the policy infers; a new chunk starts at its index 0 on the tick that
    takes it, whatever its age (up to ``max_chunk_age``).
    """

    @override
    def _reset_strategy(self) -> None:
        self._current: _Chunk | None = None
        self._limit = 0

    @override
    def _plan_chunk(self) -> _Chunk | None:
        return self._current

    def _finished(self, now: float) -> bool:
        chunk = self._current
        return (chunk is None or self._too_old(chunk, now)
                or self._index(chunk, self._peek_plan_time(now)) >= self._limit)

    @override
    def next_action(self, now: float) -> RobotAction | None:
        """Return the next of the ``execute_steps`` actions, or None while waiting for a chunk."""
        inbox = self._take_inbox()
        if inbox:
            self._discarded += len(inbox) - 1  # superseded before they could start
            newest = inbox[-1]
            if self._too_old(newest, now):
                self._latency.add(now - newest.obs_time)
                self._discarded += 1
            elif self._finished(now):
                self._latency.add(now - newest.obs_time)
                self._plan_origin = None
                newest.anchor = self._plan_time(now)  # the robot waited: start at index 0
                self._current = newest
                self._limit = min(self._config.execute_steps, newest.length)
            else:
                with self._lock:  # early chunk: keep it until this one is done
                    self._inbox.insert(0, newest)
        chunk = self._current
        if chunk is None:
            return self._hold()
        if self._too_old(chunk, now):
            self._current = None
            return self._hold()
        index = self._index(chunk, self._plan_time(now))
        if index >= self._limit:
            return self._hold()
        return self._emit(chunk, index, now)

    @override
    def needs_inference(self, now: float) -> bool:
        """Return True once the current chunk's ``execute_steps`` actions are done."""
        return not self._inbox and self._finished(now)


@register_strategy('async')
class AsyncExecutor(ChunkExecutor):
    """
    Execute the current chunk while the next one is computed; switch seamlessly on arrival.

    A new chunk takes over on the next tick at the index meant for that tick's plan time, so the
    actions whose time has passed during inference are dropped. Inference is requested once the
    actions left are at most ``request_remaining`` or the latency estimate plus a margin.
    """

    @override
    def _reset_strategy(self) -> None:
        self._current: _Chunk | None = None

    @override
    def _plan_chunk(self) -> _Chunk | None:
        return self._current

    @override
    def next_action(self, now: float) -> RobotAction | None:
        """Return the action meant for this tick's plan time, or None when the plan ran out."""
        time = self._plan_time(now)
        inbox = self._take_inbox()
        for position, chunk in enumerate(inbox):
            self._latency.add(now - chunk.obs_time)  # late chunks count: they measure latency
            start = self._index(chunk, time)
            if start >= chunk.length or self._too_old(chunk, now):
                self._discarded += 1  # arrived after its last action's time
                continue
            if position < len(inbox) - 1:
                self._discarded += 1  # superseded by a newer chunk in the same tick
                continue
            self._dropped += max(start, 0)
            self._current = chunk
        chunk = self._current
        if chunk is None:
            return self._hold()
        index = self._index(chunk, time)
        if index >= chunk.length or self._too_old(chunk, now):
            self._current = None
            return self._hold()
        if index < 0:  # stamped in the future (clock offset): do not run ahead of it
            return self._hold()
        return self._emit(chunk, index, now)

    @override
    def needs_inference(self, now: float) -> bool:
        """Return True when the next chunk must be started to land before this one runs out."""
        if self._inbox:
            return False
        chunk = self._current
        if chunk is None or self._too_old(chunk, now):
            return True
        threshold = max(self._config.request_remaining,
                        self._latency.delay_ticks + self._config.latency_margin_ticks)
        return self._remaining_after(chunk, now) <= threshold


@register_strategy('ensemble')
class EnsembleExecutor(ChunkExecutor):
    """
    Average every chunk's action for the current time step, as ACT's temporal ensembling.

    Weights are ``w_j = exp(-m * j)`` over the chunks covering the step, ``j = 0`` the oldest
    (``m = ensemble_coefficient``). Inference is wanted on every tick.
    """

    @override
    def _reset_strategy(self) -> None:
        self._chunks: list[_Chunk] = []  # ordered by obs_time, oldest first
        self._weights = np.ones(0)

    @override
    def _plan_chunk(self) -> _Chunk | None:
        return self._chunks[-1] if self._chunks else None

    def _weight_table(self, count: int) -> np.ndarray:
        if count > self._weights.size:  # grows rarely: at most one entry per live chunk
            self._weights = np.exp(-self._config.ensemble_coefficient * np.arange(2 * count))
        return self._weights

    @override
    def next_action(self, now: float) -> RobotAction | None:
        """Return the weighted average of the covering chunks' actions, or None if none covers."""
        time = self._plan_time(now)
        for chunk in self._take_inbox():
            self._latency.add(now - chunk.obs_time)
            if self._too_old(chunk, now) or self._index(chunk, time) >= chunk.length:
                self._discarded += 1
                continue
            self._chunks.append(chunk)  # add_chunk keeps obs_time increasing
        live = [c for c in self._chunks
                if self._index(c, time) < c.length and not self._too_old(c, now)]
        self._chunks = live
        covering = [(c, i) for c in live if (i := self._index(c, time)) >= 0]
        if not covering:
            return self._hold()
        weights = self._weight_table(len(covering))
        total = np.zeros(covering[0][0].actions.shape[1])  # (D,)
        for j, (chunk, index) in enumerate(covering):
            total += weights[j] * chunk.actions[index]
        total /= weights[:len(covering)].sum()
        newest, newest_index = covering[-1]
        self._emit(newest, newest_index, now)
        return total

    @override
    def needs_inference(self, now: float) -> bool:
        """Return True unless a chunk is waiting to be taken (ensembling infers every tick)."""
        return not self._inbox


def make_executor(config: ExecutionConfig) -> ChunkExecutor:
    """
    Build the executor named by ``config.strategy``.

    Raises:
        ValueError: for an unknown strategy (listing the available ones).

    """
    return get_strategy(config.strategy)(config)
