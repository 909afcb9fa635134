"""
Turn action chunks into one action per control tick (sync, async latency-aware, ACT ensembling).

This module holds the strategy registry, the three strategies and make_executor
(``ExecutionConfig`` lives with the other frozen configs in :mod:`pi0_policy.runtime.config`).
The machinery they share (inbox, plan clock, latency tracking, progress and counters) and the
conventions every strategy follows (explicit time, chunk anchors, the plan clock, holding,
threading) are in :mod:`pi0_policy.runtime.executor_base`; its public names are re-exported here.

Real-Time Chunking (``rtc``; Black, Galliker, Levine 2025, Algorithm 1) executes like ``async``
(stitching by plan time starts a new chunk at the index meant for the tick that takes it, i.e.
after the ``d`` actions that passed during inference) but starts the next inference once
``execute_steps`` (the execution horizon ``s``) actions of the current chunk have been executed,
and hands the inference the current chunk's unexecuted actions from the observation time on
(``request_extras``: leftover ``Y``, the estimated delay ``d`` and ``s``), which the policy turns
into guidance in model space. It needs ``d <= s <= H - d``; a delay estimate outside that range is
reported by ``RtcExecutor.delay_problem`` and clamped by the sampler (``d <= len(Y)``).

Chunk rate: the policy's actions are spaced at ``chunk_rate_hz`` (the rate of its training data,
the robot config's ``control_rate_hz``), which may differ from the control rate; every strategy
samples a chunk by time, interpolating linearly between actions when the rates differ (see
:mod:`pi0_policy.runtime.executor_base`).
"""

from collections.abc import Callable
import difflib
from typing import TypeVar

import numpy as np
from pi0_policy.runtime.config import ExecutionConfig  # noqa: F401 (re-exported)
from pi0_policy.runtime.executor_base import (  # noqa: F401 (re-exported)
    AcceptedChunk, ActionChunk, ChunkExecutor, ChunkProgress, ExecutorStats, GuidanceTarget,
    RobotAction, RTC_DELAY_KEY, RTC_EXECUTE_KEY, RTC_LEFTOVER_KEY)
from typing_extensions import override

_STRATEGIES: dict[str, type[ChunkExecutor]] = {}
_E = TypeVar('_E', bound=ChunkExecutor)


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


def get_strategy(name: str) -> type[ChunkExecutor]:
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


@register_strategy('sync')
class SyncExecutor(ChunkExecutor):
    """
    Execute ``execute_steps`` actions of a chunk, then hold until the next chunk arrives.

    The robot pauses while the policy infers; a new chunk starts at its index 0 on the tick that
    takes it, whatever its age: the robot held still, so however slow the model (full π0 on a
    CPU takes seconds), the chunk is still valid. ``max_chunk_age`` does not apply. The
    ``execute_steps`` actions span ``execute_steps / chunk_rate_hz`` seconds.
    """

    @override
    def _reset_strategy(self) -> None:
        self._current: AcceptedChunk | None = None
        self._limit = 0

    @override
    def _plan_chunk(self) -> AcceptedChunk | None:
        return self._current

    def _finished(self, now: float) -> bool:
        chunk = self._current
        return chunk is None or self._index(chunk, self._peek_plan_time(now)) >= self._limit

    @override
    def next_action(self, now: float) -> RobotAction | None:
        """Return the next of the ``execute_steps`` actions, or None while waiting for a chunk."""
        inbox = self._take_inbox()
        if inbox:
            self._discarded += len(inbox) - 1  # superseded before they could start
            newest = inbox[-1]
            if self._finished(now):
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
        time = self._plan_time(now)
        index = self._index(chunk, time)
        if index >= self._limit:
            return self._hold()
        return self._emit(chunk, index, now, time)

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
        self._current: AcceptedChunk | None = None

    @override
    def _plan_chunk(self) -> AcceptedChunk | None:
        return self._current

    @override
    def next_action(self, now: float) -> RobotAction | None:
        """Return the action meant for this tick's plan time, or None when the plan ran out."""
        time = self._plan_time(now)
        inbox = self._take_inbox()
        for position, chunk in enumerate(inbox):
            self._latency.add(now - chunk.obs_time)  # late chunks count: they measure latency
            start = self._index(chunk, time)
            if self._too_old(chunk, now):
                self._discarded += 1
                self._too_old_count += 1
                continue
            if start >= chunk.length:
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
        if self._too_old(chunk, now):
            self._too_old_count += 1
            self._current = None
            return self._hold()
        if index >= chunk.length:
            self._current = None
            return self._hold()
        if index < 0:  # stamped in the future (clock offset): do not run ahead of it
            return self._hold()
        return self._emit(chunk, index, now, time)

    @override
    def needs_inference(self, now: float) -> bool:
        """Return True when the next chunk must be started to land before this one runs out."""
        if self._inbox:
            return False
        chunk = self._current
        if chunk is None or self._too_old(chunk, now):
            return True
        remaining = self._remaining_after(chunk, now)  # chunk actions
        if remaining <= self._request_remaining(chunk):
            return True
        threshold = self._latency.delay_ticks + self._config.latency_margin_ticks  # ticks
        return self._steps_to_ticks(remaining) <= threshold

    def _request_remaining(self, chunk: AcceptedChunk) -> int:
        """Return the actions left in ``chunk`` at which the next inference is requested."""
        return self._config.request_remaining


@register_strategy('ensemble')
class EnsembleExecutor(ChunkExecutor):
    """
    Average every chunk's action for the current time step, as ACT's temporal ensembling.

    Weights are ``w_j = exp(-m * j)`` over the chunks covering the step, ``j = 0`` the oldest
    (``m = ensemble_coefficient``); each chunk contributes its action for the tick's plan time
    (interpolated when ``chunk_rate_hz`` differs from the control rate). Inference is wanted on
    every tick.
    """

    @override
    def _reset_strategy(self) -> None:
        self._chunks: list[AcceptedChunk] = []  # ordered by obs_time, oldest first
        self._weights = np.ones(0)

    @override
    def _plan_chunk(self) -> AcceptedChunk | None:
        return self._chunks[-1] if self._chunks else None

    @override
    def _config_updated(self) -> None:
        self._weights = np.ones(0)  # recomputed with the new ensemble_coefficient

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
            if self._too_old(chunk, now):
                self._discarded += 1
                self._too_old_count += 1
                continue
            if self._index(chunk, time) >= chunk.length:
                self._discarded += 1
                continue
            self._chunks.append(chunk)  # add_chunk keeps obs_time increasing
        fresh = [c for c in self._chunks if not self._too_old(c, now)]
        self._too_old_count += len(self._chunks) - len(fresh)
        live = [c for c in fresh if self._index(c, time) < c.length]
        self._chunks = live
        covering = [(c, i) for c in live if (i := self._index(c, time)) >= 0]
        if not covering:
            return self._hold()
        weights = self._weight_table(len(covering))
        total = np.zeros(covering[0][0].actions.shape[1])  # (D,)
        for j, (chunk, index) in enumerate(covering):
            total += weights[j] * self._sample(chunk, index, time)
        total /= weights[:len(covering)].sum()
        newest, newest_index = covering[-1]
        self._record(newest, newest_index, now)
        return total

    @override
    def needs_inference(self, now: float) -> bool:
        """Return True unless a chunk is waiting to be taken (ensembling infers every tick)."""
        return not self._inbox


@register_strategy('rtc')
class RtcExecutor(AsyncExecutor):
    """
    Real-Time Chunking: async execution, inference every ``s`` actions, guided by the leftover.

    ``s`` is ``execute_steps``: the next inference is requested once the current chunk's index
    reaches ``s`` (at most ``H - s`` actions left), or earlier when the async latency rule fires.
    ``request_extras`` gives the inference the current chunk from the observation time on and the
    delay estimate ``d`` (a high quantile of recent observation-to-chunk delays, cold start
    excluded), both in chunk steps.
    """

    @override
    def _request_remaining(self, chunk: AcceptedChunk) -> int:
        """Request the next inference once ``execute_steps`` actions of ``chunk`` are done."""
        return chunk.length - self._config.execute_steps

    @override
    def request_extras(self, obs_time: float) -> dict[str, object]:
        """Return the leftover, d and s for an inference from the observation at ``obs_time``."""
        target = self.guidance_target(obs_time)
        if target is None:
            return {}
        return {RTC_LEFTOVER_KEY: target.actions, RTC_DELAY_KEY: target.delay_ticks,
                RTC_EXECUTE_KEY: self._config.execute_steps}

    def delay_problem(self, horizon: int) -> str | None:
        """
        Return why the current delay estimate breaks ``d <= s <= H - d``, or None if it holds.

        Args:
            horizon: The chunk length H.
        """
        return rtc_delay_problem(self._latency.steps(self._chunk_rate),
                                 self._config.execute_steps, horizon)


def rtc_delay_problem(delay: int, execute_steps: int, horizon: int) -> str | None:
    """
    Return why an inference delay breaks RTC's ``d <= s <= H - d``, or None if it holds.

    Args:
        delay: The inference delay d in chunk steps.
        execute_steps: The execution horizon s.
        horizon: The chunk length H.
    """
    d, s = delay, execute_steps
    if d <= s <= horizon - d:
        return None
    return (f'RTC needs d <= s <= H - d, but the estimated inference delay is d={d} chunk '
            f'steps with execute_steps s={s} and horizon H={horizon}: '
            + (f'set execute_steps to a value in [{d}, {horizon - d}].' if 2 * d <= horizon
               else f'a delay above H/2={horizon // 2} steps is too slow for RTC; use a '
                    'faster device or model, or the sync strategy.'))


def make_executor(config: ExecutionConfig) -> ChunkExecutor:
    """
    Build the executor named by ``config.strategy``.

    Raises:
        ValueError: for an unknown strategy (listing the available ones).

    """
    return get_strategy(config.strategy)(config)
