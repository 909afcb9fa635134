"""Tests of the chunk executors: synthetic chunks, explicit times, no clock and no ROS."""

import math
import threading
import time

import numpy as np
from pi0_policy.runtime import chunking
from pi0_policy.runtime.chunking import ExecutionConfig, make_executor
import pytest

RATE = 50.0  # Hz
DT = 1.0 / RATE  # seconds
HORIZON = 50
DIM = 2


def ramp(base: float, length: int = HORIZON) -> np.ndarray:
    """Return a (length, DIM) chunk whose row k is (base + k, -(base + k))."""
    values = base + np.arange(length, dtype=np.float64)
    return np.stack([values, -values], axis=1)


def tick(k: int) -> float:
    """Return the time of control tick k (ticks aligned with the observation grid)."""
    return k * DT


def run(executor: chunking.ChunkExecutor, ticks: range) -> list[float | None]:
    """Call next_action on each tick; return the first dim of each action (None when held)."""
    out = []
    for k in ticks:
        action = executor.next_action(tick(k))
        out.append(None if action is None else float(action[0]))
    return out


def run_at(executor: chunking.ChunkExecutor, start: float, ticks: range) -> list[float | None]:
    """Call next_action at start + k * DT for each k; return first dims (None when held)."""
    out = []
    for k in ticks:
        action = executor.next_action(start + k * DT)
        out.append(None if action is None else float(action[0]))
    return out


# -- configuration and registry ------------------------------------------------------------------

def test_registry_lists_strategies_and_builds_each():
    assert chunking.available_strategies() == ('async', 'ensemble', 'rtc', 'sync')
    for name, cls in (('sync', chunking.SyncExecutor), ('async', chunking.AsyncExecutor),
                      ('ensemble', chunking.EnsembleExecutor), ('rtc', chunking.RtcExecutor)):
        executor = make_executor(ExecutionConfig(strategy=name))
        assert type(executor) is cls and executor.name == name


def test_unknown_strategy_lists_available_and_suggests():
    with pytest.raises(ValueError) as info:
        ExecutionConfig(strategy='asnyc')
    message = str(info.value)
    assert "'asnyc'" in message
    assert 'available: async, ensemble, rtc, sync' in message
    assert "Did you mean 'async'?" in message


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="'sync' is already registered by SyncExecutor"):
        chunking.register_strategy('sync')(type('Other', (chunking.SyncExecutor,), {}))


@pytest.mark.parametrize('kwargs, pattern', [
    ({'strategy': 'sync', 'horizon': 20, 'execute_steps': 30},
     r'execute_steps=30 exceeds horizon=20.*set execute_steps <= 20'),
    ({'chunk_rate_hz': 0.0, 'control_rate_hz': 40.0},
     r'chunk_rate_hz=0.0 must be a finite positive rate.*or None to use control_rate_hz=40.0'),
    ({'chunk_rate_hz': math.nan}, r'chunk_rate_hz=nan must be a finite positive rate'),
    ({'control_rate_hz': 0.0}, r'control_rate_hz=0.0 must be a finite positive rate'),
    ({'control_rate_hz': math.inf}, r'control_rate_hz=inf'),
    ({'latency_quantile': 0.0}, r'latency_quantile=0.0 must be in \(0, 1\]'),
    ({'max_tick_lag': 1.0}, r'max_tick_lag=1.0 must exceed 1 tick'),
    ({'max_chunk_age': 0.0, 'strategy': 'async'}, r'max_chunk_age=0.0 must be a positive'),
    ({'ensemble_coefficient': math.nan}, r'ensemble_coefficient=nan must be finite'),
    ({'execute_steps': 0}, r'execute_steps=0 is too small; expected >= 1'),
    ({'horizon': 0}, r'horizon=0 is too small'),
])
def test_config_validation_messages(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ExecutionConfig(**kwargs)


def test_config_type_errors_name_the_value():
    with pytest.raises(TypeError, match=r'execute_steps must be an int, got 2.5 \(float\)'):
        ExecutionConfig(execute_steps=2.5)
    with pytest.raises(TypeError, match=r'latency_window must be an int, got True'):
        ExecutionConfig(latency_window=True)
    with pytest.raises(TypeError, match=r"chunk_rate_hz must be a number of Hz or None, got '20' "
                       r'\(str\); control_rate_hz=50.0'):
        ExecutionConfig(chunk_rate_hz='20')


def test_config_checks_only_the_settings_of_its_strategy():
    ExecutionConfig(strategy='async', horizon=10, execute_steps=25)
    ExecutionConfig(strategy='sync', horizon=10, execute_steps=10, request_remaining=25)


def test_config_defaults_and_dt():
    config = ExecutionConfig()
    assert config.control_rate_hz == 50.0 and config.dt == pytest.approx(0.02)
    assert config.ensemble_coefficient == 0.01
    assert config.chunk_rate_hz is None and config.resolved_chunk_rate_hz == 50.0
    slow = ExecutionConfig(chunk_rate_hz=20)
    assert slow.resolved_chunk_rate_hz == 20.0 and slow.chunk_dt == pytest.approx(0.05)
    # sync ignores max_chunk_age, so a short one no longer conflicts with execute_steps.
    ExecutionConfig(strategy='sync', execute_steps=25, max_chunk_age=0.4)


# -- add_chunk input checks -----------------------------------------------------------------------

@pytest.mark.parametrize('actions, pattern', [
    (np.zeros(5), r'non-empty \(H, D\) array; got shape \(5,\)'),
    (np.zeros((0, 2)), r'got shape \(0, 2\)'),
    (np.array([[0.0, 1.0], [np.nan, 0.0]]), r'NaN/Inf in rows \[1\]'),
])
def test_add_chunk_rejects_bad_arrays(actions, pattern):
    executor = make_executor(ExecutionConfig())
    with pytest.raises(ValueError, match=pattern):
        executor.add_chunk(actions, 0.0, 0)


def test_add_chunk_checks_horizon_and_dims():
    executor = make_executor(ExecutionConfig(horizon=HORIZON))
    with pytest.raises(ValueError, match=r'has 10 actions but ExecutionConfig.horizon=50'):
        executor.add_chunk(ramp(0.0, 10), 0.0, 0)
    executor.add_chunk(ramp(0.0), 0.0, 0)
    with pytest.raises(ValueError, match=r'has 3 dims but earlier chunks had 2'):
        executor.add_chunk(np.zeros((HORIZON, 3)), 0.1, 1)


def test_chunk_is_copied_and_actions_are_read_only():
    executor = make_executor(ExecutionConfig(strategy='async'))
    actions = ramp(0.0)
    executor.add_chunk(actions, 0.0, 0)
    actions[:] = 999.0  # the caller reuses its buffer
    action = executor.next_action(0.0)
    assert action[0] == 0.0
    with pytest.raises(ValueError):
        action[0] = 1.0


# -- sync -----------------------------------------------------------------------------------------

def test_sync_executes_k_then_holds_and_resumes_at_index_zero():
    executor = make_executor(ExecutionConfig(strategy='sync', execute_steps=5))
    assert executor.needs_inference(tick(0))
    assert executor.next_action(tick(0)) is None  # nothing yet: hold
    # Chunk from an observation at tick 0 arrives 7 ticks later: the robot waited, start at 0.
    executor.add_chunk(ramp(0.0), tick(0), 0)
    assert not executor.needs_inference(tick(7))
    assert run(executor, range(7, 12)) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert executor.needs_inference(tick(12))
    progress = executor.progress
    assert (progress.sequence, progress.index, progress.length) == (0, 4, HORIZON)
    assert progress.chunk_age == pytest.approx(tick(11))
    assert run(executor, range(12, 15)) == [None, None, None]  # paused while inferring
    executor.add_chunk(ramp(100.0), tick(12), 1)
    assert not executor.needs_inference(tick(15))
    assert run(executor, range(15, 21)) == [100.0, 101.0, 102.0, 103.0, 104.0, None]
    assert executor.stats.holds == 1 + 3 + 1
    assert executor.stats.chunks_discarded == 0


def test_sync_keeps_an_early_chunk_until_the_current_one_is_done():
    executor = make_executor(ExecutionConfig(strategy='sync', execute_steps=3))
    executor.add_chunk(ramp(0.0), tick(0), 0)
    assert run(executor, range(1, 3)) == [0.0, 1.0]
    executor.add_chunk(ramp(100.0), tick(2), 1)
    assert not executor.needs_inference(tick(3))  # a chunk is waiting
    assert run(executor, range(3, 6)) == [2.0, 100.0, 101.0]


def test_sync_accepts_a_chunk_long_after_its_observation():
    # A slow model (full π0 on a CPU): the chunk arrives 5 s after its observation, far beyond
    # max_chunk_age; the robot held meanwhile, so the chunk starts at its action 0 and runs.
    executor = make_executor(ExecutionConfig(strategy='sync', execute_steps=5,
                                             max_chunk_age=1.0))
    assert executor.next_action(0.0) is None
    executor.add_chunk(ramp(0.0), 0.0, 0)
    arrival = 5.0
    assert run_at(executor, arrival, range(6)) == [0.0, 1.0, 2.0, 3.0, 4.0, None]
    stats = executor.stats
    assert stats.chunks_discarded == 0 and stats.chunks_too_old == 0
    assert executor.progress.chunk_age == pytest.approx(arrival + 4 * DT)
    assert executor.needs_inference(arrival + 6 * DT)


# -- async ----------------------------------------------------------------------------------------

def test_async_drops_elapsed_actions_and_stitches_without_repeats_or_gaps():
    executor = make_executor(ExecutionConfig(strategy='async', request_remaining=10))
    # Chunk A (values = index) from an observation at tick 0, arriving at tick 3.
    executor.add_chunk(ramp(0.0), tick(0), 0)
    first = run(executor, range(3, 11))
    assert first == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]  # 3 elapsed actions dropped
    assert executor.stats.actions_dropped == 3
    # Chunk B (values = 1000 + index) from an observation at tick 5 arrives at tick 11.
    executor.add_chunk(ramp(1000.0), tick(5), 1)
    second = run(executor, range(11, 16))
    # Tick 11 is B's index 6: B[0..5] lie in the past and are dropped.
    assert second == [1006.0, 1007.0, 1008.0, 1009.0, 1010.0]
    assert executor.stats.actions_dropped == 3 + 6
    # The executed plan in time: A's value v is meant for tick v, B's value v for tick 5 + v.
    times = first + [5.0 + (v - 1000.0) for v in second]
    assert np.array_equal(np.diff(times), np.ones(len(times) - 1))
    assert executor.progress.sequence == 1


def test_async_discards_a_chunk_from_an_older_observation():
    executor = make_executor(ExecutionConfig(strategy='async'))
    assert executor.add_chunk(ramp(0.0), tick(10), 1)
    assert executor.next_action(tick(12))[0] == 2.0
    assert not executor.add_chunk(ramp(500.0), tick(5), 0)  # computed before the current one
    assert not executor.add_chunk(ramp(600.0), tick(10), 2)  # same observation again
    assert run(executor, range(13, 15)) == [3.0, 4.0]
    assert executor.stats.chunks_discarded == 2
    assert executor.stats.chunks_received == 3


def test_async_returns_none_when_exhausted_and_requests_inference():
    executor = make_executor(ExecutionConfig(strategy='async', request_remaining=2))
    executor.add_chunk(ramp(0.0, 6), tick(0), 0)
    assert not executor.needs_inference(tick(0))
    assert run(executor, range(0, 3)) == [0.0, 1.0, 2.0]
    assert not executor.needs_inference(tick(3))  # 3 left
    assert run(executor, range(3, 4)) == [3.0]
    assert executor.needs_inference(tick(4))  # 2 left
    assert run(executor, range(4, 8)) == [4.0, 5.0, None, None]
    assert executor.progress.remaining == 0
    assert executor.needs_inference(tick(8))


def test_async_discards_a_chunk_whose_actions_all_lie_in_the_past():
    executor = make_executor(ExecutionConfig(strategy='async'))
    executor.add_chunk(ramp(0.0), tick(0), 0)
    run(executor, range(0, 20))
    executor.add_chunk(ramp(1000.0, 5), tick(10), 1)  # ends at tick 14, taken at tick 20
    assert run(executor, range(20, 22)) == [20.0, 21.0]
    assert executor.stats.chunks_discarded == 1


def test_async_request_threshold_follows_latency_estimate():
    config = ExecutionConfig(strategy='async', request_remaining=10, latency_margin_ticks=2,
                             latency_skip_first=1)
    executor = make_executor(config)
    # Cold start: 40 ticks late, excluded from the estimate.
    executor.add_chunk(ramp(0.0), tick(0), 0)
    executor.next_action(tick(40))
    assert executor.stats.latency is None and executor.stats.delay_ticks == 0
    # Next chunk: 15 ticks (0.3 s) late.
    executor.add_chunk(ramp(0.0), tick(41), 1)
    executor.next_action(tick(56))
    stats = executor.stats
    assert stats.latency == pytest.approx(0.3) and stats.delay_ticks == 15
    # Threshold = max(10, 15 + 2) = 17 actions; the chunk from tick 41 ends at tick 90.
    run(executor, range(57, 73))
    assert not executor.needs_inference(tick(73))  # actions for ticks 73..90: 18 left
    run(executor, range(73, 74))
    assert executor.needs_inference(tick(74))  # 17 left, more than request_remaining=10


def test_latency_quantile_over_the_window():
    executor = make_executor(ExecutionConfig(strategy='async', latency_skip_first=0,
                                             latency_window=4, latency_quantile=0.5))
    delays_ticks = [5, 1, 9, 3, 7]  # the first falls out of the 4-sample window
    start = 0
    for sequence, delay in enumerate(delays_ticks):
        executor.add_chunk(ramp(0.0), tick(start), sequence)
        executor.next_action(tick(start + delay))
        start += delay + 1
    # Window [1, 9, 3, 7] -> sorted [1, 3, 7, 9]; the 0.5 quantile is the 2nd: 3 ticks.
    assert executor.stats.latency == pytest.approx(tick(3))
    assert executor.stats.delay_ticks == 3


def test_async_plan_clock_ignores_jitter_and_skips_missed_ticks():
    executor = make_executor(ExecutionConfig(strategy='async'))
    executor.add_chunk(ramp(0.0), tick(0), 0)
    jitter = np.random.default_rng(0).uniform(-0.4, 0.4, size=20) * DT
    values = [executor.next_action(tick(k) + jitter[k])[0] for k in range(20)]
    assert values == [float(k) for k in range(20)]  # no repeats, no gaps
    # The timer stalls: ticks 20..24 are missed; the plan jumps to now.
    assert executor.next_action(tick(25))[0] == 25.0
    assert executor.stats.ticks_skipped == 5


def test_async_holds_for_a_chunk_stamped_in_the_future():
    executor = make_executor(ExecutionConfig(strategy='async'))
    executor.add_chunk(ramp(0.0), tick(10), 0)
    assert executor.next_action(tick(5)) is None


def test_reset_forgets_chunks_and_counters():
    executor = make_executor(ExecutionConfig(strategy='async'))
    executor.add_chunk(ramp(0.0), tick(10), 0)
    executor.next_action(tick(10))
    executor.reset()
    assert executor.next_action(tick(11)) is None
    assert executor.progress.sequence == -1 and executor.progress.chunk_age is None
    assert executor.stats.chunks_received == 0
    assert executor.add_chunk(ramp(0.0), tick(1), 0)  # older stamps are accepted again


def test_add_chunk_from_another_thread_while_ticking():
    executor = make_executor(ExecutionConfig(strategy='async'))
    count = 50
    clock = [0.0]  # the consumer's time, read by the producer to stamp its chunks

    def produce() -> None:
        last = -1.0
        n = 0
        while n < count:
            stamp = clock[0]
            if stamp > last:
                executor.add_chunk(ramp(1000.0 * n), stamp, n)
                last = stamp
                n += 1

    producer = threading.Thread(target=produce)
    producer.start()
    seen = []
    k = 0
    while producer.is_alive() or not seen or executor.progress.sequence != count - 1:
        k += 1
        clock[0] = tick(k)
        action = executor.next_action(tick(k))
        if action is not None:
            seen.append(action[0])
        time.sleep(0)  # let the producer run, as a timer thread would
        assert k < 10_000_000, 'the last chunk never came through'
    producer.join()
    assert executor.stats.chunks_received == count
    assert all(v % 1000.0 < HORIZON for v in seen)  # every action is a row of some chunk


# -- ensemble -------------------------------------------------------------------------------------

@pytest.mark.parametrize('m', [0.01, 0.5, 0.0, -0.3])
def test_ensemble_weights_match_the_act_formula(m):
    executor = make_executor(ExecutionConfig(strategy='ensemble', ensemble_coefficient=m))
    rng = np.random.default_rng(1)
    chunks = [rng.normal(size=(10, DIM)) for _ in range(3)]
    for j, chunk in enumerate(chunks):  # j = 0 is the oldest
        executor.add_chunk(chunk, tick(j), j)
    assert not executor.needs_inference(tick(2))  # chunks are waiting to be taken
    action = executor.next_action(tick(2))
    assert executor.needs_inference(tick(3))  # ensembling wants a chunk every tick
    # At tick 2 the chunks from ticks 0, 1, 2 predict their rows 2, 1, 0.
    predictions = np.stack([chunks[0][2], chunks[1][1], chunks[2][0]])
    weights = np.exp(-m * np.arange(3))
    expected = (weights[:, None] * predictions).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(action, expected, rtol=1e-12)
    assert executor.progress.sequence == 2 and executor.progress.index == 0


def test_ensemble_drops_expired_chunks_and_holds_when_none_covers():
    executor = make_executor(ExecutionConfig(strategy='ensemble', ensemble_coefficient=0.0))
    executor.add_chunk(np.full((3, DIM), 1.0), tick(0), 0)
    executor.add_chunk(np.full((3, DIM), 3.0), tick(1), 1)
    assert run(executor, range(1, 5)) == [2.0, 2.0, 3.0, None]  # chunk 0 ends at tick 2
    assert executor.next_action(tick(5)) is None


def test_ensemble_waits_for_a_chunk_stamped_after_the_tick():
    executor = make_executor(ExecutionConfig(strategy='ensemble'))
    executor.add_chunk(np.ones((5, DIM)), tick(3), 0)
    assert executor.next_action(tick(1)) is None
    assert executor.next_action(tick(3))[0] == 1.0


# -- Real-Time Chunking hook ----------------------------------------------------------------------

def test_guidance_target_aligns_the_remaining_plan_to_a_new_observation():
    executor = make_executor(ExecutionConfig(strategy='async', latency_skip_first=0))
    assert executor.guidance_target(tick(0)) is None
    executor.add_chunk(ramp(0.0), tick(0), 7)
    run(executor, range(4, 10))  # delay 4 ticks recorded, executed up to index 9
    target = executor.guidance_target(tick(10))
    assert target.sequence == 7 and target.delay_ticks == 4
    assert target.start_time == pytest.approx(tick(10))
    np.testing.assert_array_equal(target.actions, ramp(0.0)[10:])
    assert executor.guidance_target(tick(HORIZON)) is None  # the plan ends before it


# -- chunk rate != control rate -------------------------------------------------------------------

CHUNK_RATE = 20.0  # Hz: a policy trained on 20 Hz data (franka, mobile manipulator)


def interpolated(chunk: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Return (len(positions), D): each column of ``chunk`` linearly interpolated at positions."""
    steps = np.arange(chunk.shape[0], dtype=np.float64)
    return np.stack([np.interp(positions, steps, chunk[:, d]) for d in range(chunk.shape[1])],
                    axis=1)


def actions_at(executor: chunking.ChunkExecutor, times: np.ndarray) -> list[np.ndarray | None]:
    """Call next_action at each time; return copies of the actions (None when held)."""
    return [None if (a := executor.next_action(float(t))) is None else np.array(a)
            for t in times]


def test_sync_interpolates_20hz_chunks_at_50hz_ticks():
    config = ExecutionConfig(strategy='sync', control_rate_hz=RATE, chunk_rate_hz=CHUNK_RATE,
                             execute_steps=5, horizon=10)
    executor = make_executor(config)
    chunk = np.random.default_rng(3).normal(size=(10, DIM))
    executor.add_chunk(chunk, 0.0, 0)
    arrival = 0.37  # the robot held until the chunk arrived: it starts at action 0
    out = actions_at(executor, arrival + np.arange(15) * DT)
    # Tick k is at chunk position k * 20 / 50 = 0.4 k; 5 actions span 5 / 20 s = 12.5 ticks.
    positions = 0.4 * np.arange(13)
    np.testing.assert_allclose(np.stack(out[:13]), interpolated(chunk, positions),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out[0], chunk[0])  # ticks on the action grid are exact
    np.testing.assert_array_equal(out[5], chunk[2])
    np.testing.assert_array_equal(out[10], chunk[4])
    assert out[13] is None and out[14] is None
    assert executor.progress.index == 4  # the tick at position 4.8 came from step 4
    assert executor.needs_inference(arrival + 15 * DT)


def test_async_20hz_chunk_lasts_horizon_over_chunk_rate():
    horizon = 10
    executor = make_executor(ExecutionConfig(strategy='async', chunk_rate_hz=CHUNK_RATE,
                                             request_remaining=0))
    chunk = np.random.default_rng(4).normal(size=(horizon, DIM))
    executor.add_chunk(chunk, 0.0, 0)
    duration = horizon / CHUNK_RATE  # 0.5 s = 25 ticks at 50 Hz
    ticks = round(duration * RATE)
    out = actions_at(executor, np.arange(ticks + 2) * DT)
    assert all(a is not None for a in out[:ticks]) and out[ticks] is None
    positions = np.arange(ticks) * DT * CHUNK_RATE
    expected = interpolated(chunk, positions)  # np.interp holds the last action past step H-1
    np.testing.assert_allclose(np.stack(out[:ticks]), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(out[ticks - 1], chunk[-1])  # position 9.6: last action held
    assert executor.progress.remaining == 0


def test_async_20hz_stitches_by_time_and_drops_elapsed_actions():
    executor = make_executor(ExecutionConfig(strategy='async', chunk_rate_hz=CHUNK_RATE))
    obs_time = 0.013
    chunk = ramp(0.0, 20)  # value = chunk position
    executor.add_chunk(chunk, obs_time, 0)
    arrival = 0.1  # 1.74 chunk steps after the observation
    out = run_at(executor, arrival, range(5))
    expected = [(arrival + k * DT - obs_time) * CHUNK_RATE for k in range(5)]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-9)
    assert executor.stats.actions_dropped == 1  # action 0 (meant for 0.013 s) lay in the past
    later = ramp(100.0, 20)
    executor.add_chunk(later, 0.15, 1)  # taken on the next tick, at 0.2 s: position 1.0
    assert executor.next_action(arrival + 5 * DT)[0] == pytest.approx(101.0, abs=1e-9)
    assert executor.stats.actions_dropped == 2


def test_async_request_threshold_converts_ticks_to_chunk_steps():
    executor = make_executor(ExecutionConfig(
        strategy='async', chunk_rate_hz=CHUNK_RATE, request_remaining=2, latency_margin_ticks=2,
        latency_skip_first=0))
    executor.add_chunk(ramp(0.0, 40), 0.0, 0)
    executor.next_action(0.3)  # delay 0.3 s: 15 control ticks
    assert executor.stats.delay_ticks == 15
    # Threshold: 15 + 2 = 17 ticks = 6.8 chunk steps; the chunk ends at 40 / 20 = 2 s.
    # Plan time t leaves 40 - floor(20 t) actions: 7 (17.5 ticks) at t = 1.65, 6 at t = 1.70.
    assert not executor.needs_inference(1.65)
    assert executor.needs_inference(1.70)


def test_ensemble_averages_interpolated_chunks():
    m = 0.5
    executor = make_executor(ExecutionConfig(strategy='ensemble', chunk_rate_hz=CHUNK_RATE,
                                             ensemble_coefficient=m))
    rng = np.random.default_rng(5)
    chunks = [rng.normal(size=(8, DIM)) for _ in range(2)]
    stamps = [0.0, 0.05]
    for j, (chunk, stamp) in enumerate(zip(chunks, stamps)):
        executor.add_chunk(chunk, stamp, j)
    now = 0.13
    action = executor.next_action(now)
    samples = np.stack([interpolated(c, np.array([(now - s) * CHUNK_RATE]))[0]
                        for c, s in zip(chunks, stamps)])  # positions 2.6 and 1.6
    weights = np.exp(-m * np.arange(2))
    expected = (weights[:, None] * samples).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(action, expected, rtol=1e-12)
    assert executor.progress.sequence == 1 and executor.progress.index == 1


def test_guidance_target_counts_chunk_steps():
    executor = make_executor(ExecutionConfig(strategy='async', chunk_rate_hz=CHUNK_RATE,
                                             latency_skip_first=0))
    chunk = ramp(0.0, 20)
    executor.add_chunk(chunk, 0.0, 3)
    executor.next_action(0.3)  # latency 0.3 s: 15 control ticks, 6 chunk steps
    target = executor.guidance_target(0.32)  # position 6.4: nearest action 6
    assert executor.stats.delay_ticks == 15 and target.delay_ticks == 6
    assert target.start_time == pytest.approx(0.3)
    np.testing.assert_array_equal(target.actions, chunk[6:])


# -- max_chunk_age --------------------------------------------------------------------------------

def test_async_and_ensemble_count_chunks_older_than_max_chunk_age():
    for strategy in ('async', 'ensemble'):
        executor = make_executor(ExecutionConfig(strategy=strategy, max_chunk_age=1.0))
        executor.add_chunk(ramp(0.0, 100), 0.0, 0)
        assert executor.next_action(1.5) is None  # arrived 1.5 s after its observation
        stats = executor.stats
        assert (stats.chunks_discarded, stats.chunks_too_old) == (1, 1), strategy
        executor.add_chunk(ramp(0.0, 100), 1.5, 1)
        assert executor.next_action(1.5) is not None
        assert executor.next_action(2.6) is None  # expired while executing
        stats = executor.stats
        assert (stats.chunks_discarded, stats.chunks_too_old) == (1, 2), strategy


# -- Real-Time Chunking ---------------------------------------------------------------------------

def test_rtc_requests_after_execute_steps_and_hands_over_the_leftover():
    """Inference starts after s actions; the request carries the leftover from obs_time, d, s."""
    config = ExecutionConfig(strategy='rtc', execute_steps=20, horizon=HORIZON,
                             latency_skip_first=0, latency_margin_ticks=0)
    executor = make_executor(config)
    assert executor.request_extras(tick(0)) == {}  # no chunk yet: plain inference
    assert executor.needs_inference(tick(0))
    executor.add_chunk(ramp(0.0), tick(0), 1)
    run(executor, range(3, 19))  # delay 3 ticks; executed indices 3..18
    assert not executor.needs_inference(tick(19))  # index 19 next: fewer than s done
    run(executor, range(19, 20))
    assert executor.needs_inference(tick(20))  # s = 20 actions done
    extras = executor.request_extras(tick(20))
    np.testing.assert_array_equal(extras[chunking.RTC_LEFTOVER_KEY], ramp(0.0)[20:])
    assert extras[chunking.RTC_DELAY_KEY] == 3 and extras[chunking.RTC_EXECUTE_KEY] == 20
    # The new chunk arrives d = 3 ticks later and is executed from its index d.
    run(executor, range(20, 23))
    executor.add_chunk(ramp(100.0), tick(20), 2)
    assert run(executor, range(23, 25)) == [103.0, 104.0]
    assert executor.delay_problem(HORIZON) is None


def test_rtc_config_and_delay_problem_messages():
    """The check s < H on construction; a delay estimate breaking d <= s <= H - d is reported."""
    with pytest.raises(ValueError, match=r'execute_steps=50 \(the RTC execution horizon s\) '
                                         'must be below horizon=50'):
        ExecutionConfig(strategy='rtc', execute_steps=50, horizon=50)
    executor = make_executor(ExecutionConfig(strategy='rtc', execute_steps=5, horizon=HORIZON,
                                             latency_skip_first=0))
    executor.add_chunk(ramp(0.0), tick(0), 1)
    run(executor, range(10, 11))  # delay 10 ticks > s = 5
    assert executor.delay_problem(HORIZON) == (
        'RTC needs d <= s <= H - d, but the estimated inference delay is d=10 chunk steps with '
        'execute_steps s=5 and horizon H=50: set execute_steps to a value in [10, 40].')
    executor.add_chunk(ramp(0.0), tick(1), 2)
    run(executor, range(30, 31))  # delay 29 ticks > H / 2
    assert 'too slow for RTC' in executor.delay_problem(HORIZON)
