"""
Align timestamped streams (cameras, joint states, commands) to frames at a fixed rate.

Frame k of an episode is the tick ``t_k = t_0 + k / fps``. A *sample* stream (a camera, a
joint-state topic) matches tick t_k with its sample nearest to t_k within ``tolerance_s``; the
tolerance is at most half a period, so the windows of two ticks never overlap and no sample can
serve two frames (nothing is duplicated). A *hold* stream (a command topic) gives the command in
effect at t_k: the newest one stamped at or before ``t_k + tolerance_s``, at most
``hold_timeout_s`` old (a controller keeps its last target; frames that reuse a command are
counted as ``held``).

A tick where some stream has no match is dropped and counted for that stream; ticks before every
stream has delivered (the start of the recording) are ``warmup`` and not counted. A sample that
arrives after its tick was decided is ``late`` and ignored. A tick is decided once the clock
passes ``t_k + tolerance_s + latency_s`` (``pop_ready``) or at the end (``flush``). Live
recording and rosbag conversion run the same code: push in arrival order, pop with the clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
import dataclasses
import enum
import math
from typing import Any


# Slack on the flush horizon so that a tick exactly at the last sample's time is decided (s).
FLUSH_EPS_S = 1e-9


class StreamKind(enum.Enum):
    """How a stream matches a tick."""

    # Nearest sample within the tolerance, each sample at most once (sensors).
    SAMPLE = 'sample'
    # Newest value at or before the tick, within the hold timeout (commands).
    HOLD = 'hold'


@dataclasses.dataclass(frozen=True)
class AlignmentConfig:
    """Rate and tolerances of the alignment."""

    # Frame rate (Hz).
    fps: int
    # Largest |sample time - tick time| accepted (s); None: half a period (the largest allowed).
    tolerance_s: float | None = None
    # Extra wait for messages in transit before a tick is decided (s, live recording).
    latency_s: float = 0.1
    # Oldest command still in effect (s).
    hold_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        """Validate the values and fill in the default tolerance."""
        if not isinstance(self.fps, int) or self.fps <= 0:
            raise ValueError(f'fps must be a positive integer (Hz), got {self.fps!r}.')
        half = 0.5 / self.fps
        tol = half if self.tolerance_s is None else float(self.tolerance_s)
        if not 0.0 < tol <= half + 1e-12:
            raise ValueError(
                f'tolerance_s ({tol}) must be in (0, {half:g}] (half the period at {self.fps} '
                'Hz) so that one sample can never serve two frames.')
        if self.latency_s < 0 or self.hold_timeout_s <= 0:
            raise ValueError(f'latency_s ({self.latency_s}) must be >= 0 and hold_timeout_s '
                             f'({self.hold_timeout_s}) > 0.')
        object.__setattr__(self, 'tolerance_s', tol)

    @property
    def period(self) -> float:
        """Return the time between frames (s)."""
        return 1.0 / self.fps


@dataclasses.dataclass(frozen=True)
class AlignedFrame:
    """One decided tick: its time and the matched value of every stream."""

    # Tick time (s, the streams' clock).
    time: float
    # Stream name -> the value pushed with the matched sample.
    values: Mapping[str, Any]


@dataclasses.dataclass
class AlignmentReport:
    """Counts of one episode's alignment."""

    # Frames emitted.
    frames: int = 0
    # Ticks dropped (a tick missing several streams counts once).
    dropped_frames: int = 0
    # Ticks at the start, before every stream had delivered (not counted as dropped).
    warmup_ticks: int = 0
    # Stream -> ticks it had no match for.
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    # Stream -> samples that arrived after their tick was decided (ignored).
    late: dict[str, int] = dataclasses.field(default_factory=dict)
    # Hold stream -> frames that reused an earlier command.
    held: dict[str, int] = dataclasses.field(default_factory=dict)
    # Frames matched but not assembled (e.g. a joint missing); the episode is refused.
    invalid_frames: int = 0
    # The last assembly error.
    last_error: str = ''

    @property
    def drop_fraction(self) -> float:
        """Return dropped / (emitted + dropped) ticks (0 when nothing was decided)."""
        total = self.frames + self.dropped_frames
        return self.dropped_frames / total if total else 0.0

    def as_columns(self) -> dict[str, int]:
        """Return the counts as flat scalars (episode-table columns)."""
        out = {'frames': self.frames, 'dropped_frames': self.dropped_frames,
               'invalid_frames': self.invalid_frames,
               'warmup_ticks': self.warmup_ticks, 'late_messages': sum(self.late.values())}
        out.update({f'dropped/{k}': v for k, v in self.dropped.items()})
        out.update({f'late/{k}': v for k, v in self.late.items()})
        out.update({f'held/{k}': v for k, v in self.held.items()})
        return out

    def summary(self) -> str:
        """Return a one-line human summary."""
        def nonzero(counts: Mapping[str, int]) -> dict[str, int]:
            return {k: v for k, v in counts.items() if v}
        invalid = f', {self.invalid_frames} invalid ({self.last_error})' \
            if self.invalid_frames else ''
        return (f'{self.frames} frames{invalid}, {self.dropped_frames} dropped '
                f'({100 * self.drop_fraction:.1f}%) {nonzero(self.dropped)}, late messages '
                f'{nonzero(self.late)}, held commands {nonzero(self.held)}')


class FrameAligner:
    """Turn pushed (stream, time, value) samples into fixed-rate frames."""

    def __init__(self, streams: Mapping[str, StreamKind], config: AlignmentConfig, *,
                 start_time: float | None = None) -> None:
        """
        Set up the streams.

        Args:
            streams: Stream name -> kind; every frame needs all of them.
            config: Rate and tolerances.
            start_time: Time of tick 0 (s); None: the first pushed sample's time.

        Raises:
            ValueError: When there is no stream.
        """
        if not streams:
            raise ValueError('FrameAligner needs at least one stream.')
        self.config = config
        self._kinds = dict(streams)
        self._buffers: dict[str, deque[tuple[float, Any]]] = {s: deque() for s in streams}
        self._last_hold: dict[str, tuple[float, Any] | None] = {s: None for s in streams}
        self._used_hold: dict[str, float | None] = {s: None for s in streams}
        self._t0 = start_time
        self._next = 0  # index of the next undecided tick
        self._started = False  # whether a frame was emitted
        self.report = AlignmentReport(dropped={s: 0 for s in streams},
                                      late={s: 0 for s in streams},
                                      held={s: 0 for s, k in streams.items()
                                            if k is StreamKind.HOLD})

    @property
    def streams(self) -> tuple[str, ...]:
        """Return the stream names."""
        return tuple(self._kinds)

    def push(self, stream: str, time: float, value: Any) -> None:
        """
        Add one sample (in arrival order; times may be out of order within the tolerance).

        Raises:
            KeyError: On an unknown stream.
            ValueError: On a non-finite time.
        """
        if stream not in self._kinds:
            raise KeyError(f'Unknown stream {stream!r}; the aligner has {list(self._kinds)}.')
        if not math.isfinite(time):
            raise ValueError(f'Sample time of stream {stream!r} is {time}; expected seconds.')
        if self._t0 is None:
            self._t0 = time
        if time < self._t0 - self.config.tolerance_s:
            return  # before the episode started
        decided = self._tick(self._next) - self.config.tolerance_s
        if self._next > 0 and time < decided and self._kinds[stream] is StreamKind.SAMPLE:
            self.report.late[stream] += 1
            return
        buffer = self._buffers[stream]
        buffer.append((time, value))
        if len(buffer) > 1 and buffer[-2][0] > time:  # rare reordering: keep sorted
            self._buffers[stream] = deque(sorted(buffer, key=lambda s: s[0]))

    def pop_ready(self, now: float) -> list[AlignedFrame]:
        """Decide every tick the clock ``now`` has passed (by tolerance + latency)."""
        if self._t0 is None:
            return []
        horizon = now - self.config.tolerance_s - self.config.latency_s
        return self._decide_until(horizon)

    def flush(self) -> list[AlignedFrame]:
        """Decide the remaining ticks up to the last sample every sensor reached (episode end)."""
        if self._t0 is None:
            return []
        sensors = [s for s, k in self._kinds.items() if k is StreamKind.SAMPLE] or list(
            self._kinds)
        lasts = [self._last_time(s) for s in sensors]
        if any(t is None for t in lasts):
            return self._decide_until(-math.inf)
        # Up to the earliest last sample: later ticks could still have been matched by data
        # that never came, so the episode ends there rather than with counted drops.
        return self._decide_until(min(lasts) + FLUSH_EPS_S)

    # ------------------------------------------------------------------------------ internals
    def _tick(self, k: int) -> float:
        return self._t0 + k * self.config.period

    def _last_time(self, stream: str) -> float | None:
        buffer = self._buffers[stream]
        if buffer:
            return buffer[-1][0]
        last = self._last_hold[stream]
        return last[0] if last else None

    def _decide_until(self, horizon: float) -> list[AlignedFrame]:
        frames = []
        while self._tick(self._next) <= horizon:
            frame = self._decide(self._tick(self._next))
            self._next += 1
            if frame is not None:
                frames.append(frame)
        return frames

    def _decide(self, t: float) -> AlignedFrame | None:
        tol = self.config.tolerance_s
        values: dict[str, Any] = {}
        missing = []
        for stream, kind in self._kinds.items():
            buffer = self._buffers[stream]
            if kind is StreamKind.HOLD:
                while buffer and buffer[0][0] <= t + tol:
                    self._last_hold[stream] = buffer.popleft()
                last = self._last_hold[stream]
                if last is None or t - last[0] > self.config.hold_timeout_s:
                    missing.append(stream)
                else:
                    values[stream] = last
                continue
            while buffer and buffer[0][0] < t - tol:
                buffer.popleft()  # too old for this and every later tick
            best = None
            for i, (time, _) in enumerate(buffer):
                if time > t + tol:
                    break
                if best is None or abs(time - t) < abs(buffer[best][0] - t):
                    best = i
            if best is None:
                missing.append(stream)
            else:
                values[stream] = buffer[best]
        if missing:
            if self._started:
                self.report.dropped_frames += 1
                for stream in missing:
                    self.report.dropped[stream] += 1
            else:
                self.report.warmup_ticks += 1
            return None
        self._started = True
        out = {}
        for stream, (time, value) in values.items():
            out[stream] = value
            if self._kinds[stream] is StreamKind.SAMPLE:
                buffer = self._buffers[stream]
                while buffer and buffer[0][0] <= time:
                    buffer.popleft()  # consumed: never serves another frame
            else:
                if self._used_hold[stream] == time:
                    self.report.held[stream] += 1
                self._used_hold[stream] = time
        self.report.frames += 1
        return AlignedFrame(time=t, values=out)


def sample_streams(names: Sequence[str]) -> dict[str, StreamKind]:
    """Return ``{name: StreamKind.SAMPLE}`` for the names."""
    return {n: StreamKind.SAMPLE for n in names}
