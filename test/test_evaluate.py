"""
The pure-Python evaluator runs the node's chunk executors on simulated time with a delay.

A scripted policy (no model) records when it is asked and what the robot was last commanded, so
the tests see exactly which chunk rows the sim executed and when each chunk arrived.
"""

import numpy as np
from pi0_policy.runtime.config import ExecutionConfig
from pi0_policy.runtime.executor_base import RTC_DELAY_KEY, RTC_LEFTOVER_KEY
from pi0_policy.sim import evaluate
from pi0_policy.sim.aloha import AlohaSim, AlohaSimConfig
import pytest

HORIZON = 20
EXECUTE = 10
STEPS = 60
RATE_HZ = 50.0
# Waist offset (rad) encoding (chunk number, row) in every commanded row: small enough to stay
# within the joint limits, distinct for every row of every chunk.
CODE = 1e-4


@pytest.fixture(scope='module')
def sim():
    sim = AlohaSim(AlohaSimConfig(image_height=32, image_width=32))
    yield sim
    sim.close()


@pytest.fixture(scope='module')
def adapter():
    from embodiment_adapters import load_adapter
    return load_adapter(evaluate.ROBOT)


class ScriptedPolicy:
    """Chunks whose left waist encodes (call number, row); records each call."""

    def __init__(self, sim: AlohaSim) -> None:
        self.sim = sim
        self.calls: list[dict] = []

    def __call__(self, observation: dict) -> np.ndarray:
        number = len(self.calls) + 1
        self.calls.append({'time': self.sim.time, 'last_waist': self.sim.arm_target('left')[0],
                           **{k: v for k, v in observation.items() if k.startswith('rtc_')}})
        chunk = np.tile(np.asarray(observation['state'], dtype=float), (HORIZON, 1))
        chunk[:, 0] = [CODE * (100 * number + row) for row in range(HORIZON)]
        return chunk


def run(sim, adapter, strategy: str, delay: float):
    policy = ScriptedPolicy(sim)
    execution = ExecutionConfig(strategy=strategy, control_rate_hz=RATE_HZ, horizon=HORIZON,
                                execute_steps=EXECUTE, request_remaining=EXECUTE)
    episode = evaluate.run_episode(sim, policy, adapter, seed=3, execution=execution,
                                   delay=delay, steps=STEPS)
    return policy, episode


def test_delay_is_rounded_to_ticks_and_checked():
    assert evaluate.delay_ticks(0.1, RATE_HZ) == 5
    assert evaluate.delay_ticks(0.0, RATE_HZ) == 0
    assert evaluate.delay_ticks(0.029, RATE_HZ) == 1
    for bad in (-0.1, float('nan')):
        with pytest.raises(ValueError, match='finite number of seconds >= 0'):
            evaluate.delay_ticks(bad, RATE_HZ)


def test_sync_without_delay_executes_each_chunk_from_row_0(sim, adapter):
    policy, episode = run(sim, adapter, 'sync', 0.0)
    dt = 1.0 / RATE_HZ
    # One inference every EXECUTE ticks, no pause, and each inference sees the last row of the
    # previous chunk's EXECUTE rows on the robot.
    assert [round(c['time'] / dt) for c in policy.calls] == list(range(0, STEPS, EXECUTE))
    assert episode.inferences == STEPS // EXECUTE and episode.pauses == 0
    for number, call in enumerate(policy.calls[1:], start=1):
        assert call['last_waist'] == pytest.approx(CODE * (100 * number + EXECUTE - 1))
    assert len(episode.rewards) == STEPS


def test_sync_holds_for_the_delay_after_each_chunk(sim, adapter):
    policy, episode = run(sim, adapter, 'sync', 0.1)
    dt, lag = 1.0 / RATE_HZ, 5
    # Chunk n arrives lag ticks after its observation, runs EXECUTE ticks, then the robot holds
    # for lag ticks while the next inference runs.
    assert [round(c['time'] / dt) for c in policy.calls] == list(range(0, STEPS, EXECUTE + lag))
    assert episode.pauses == (episode.inferences - 1) * lag
    for number, call in enumerate(policy.calls[1:], start=1):
        assert call['last_waist'] == pytest.approx(CODE * (100 * number + EXECUTE - 1))


def test_async_and_rtc_never_pause_and_rtc_gets_the_leftover_and_delay(sim, adapter):
    lag = 5
    for strategy in ('async', 'rtc'):
        policy, episode = run(sim, adapter, strategy, lag / RATE_HZ)
        assert episode.pauses == 0, strategy
        assert episode.inferences >= STEPS // EXECUTE - 1, strategy
    # RTC: every inference after the first carries the current chunk from the observation on;
    # the delay estimate is the simulated delay once the cold-start chunk is skipped.
    assert RTC_LEFTOVER_KEY not in policy.calls[0]
    later = policy.calls[1:]
    assert all(c[RTC_LEFTOVER_KEY].shape[1] == adapter.dof for c in later)
    assert [c[RTC_DELAY_KEY] for c in later][1:] == [lag] * (len(later) - 1)


def test_table_lists_every_cell(sim, adapter):
    _, episode = run(sim, adapter, 'ensemble', 0.0)
    from pi0_policy.sim.scripted import StageReport
    cell = evaluate.CellResult('ensemble', 0.2, StageReport.from_rewards([episode.rewards]),
                               episode.inferences, episode.pauses)
    text = evaluate.table([cell])
    assert '| ensemble | 200 | 0% |' in text
    assert cell.as_dict()['delay_s'] == 0.2 and cell.as_dict()['episodes'] == 1


def test_main_runs_the_grid_warns_on_an_impossible_rtc_delay_and_writes_json(tmp_path, capsys):
    import json
    out = tmp_path / 'grid.json'
    # Tiny random model, one episode per cell; 0.6 s = 30 ticks > H - s = 25 for RTC.
    assert evaluate.main(['--episodes', '1', '--strategy', 'sync', 'rtc', '--delay', '0', '0.6',
                          '--out', str(out)]) == 0
    captured = capsys.readouterr()
    assert ('rtc at 0.6 s: RTC needs d <= s <= H - d, but the estimated inference delay is '
            'd=30 chunk steps with execute_steps s=25 and horizon H=50') in captured.err
    assert 'rtc at 0.0 s' not in captured.err
    assert captured.out.count('| sync |') == 2 and captured.out.count('| rtc |') == 2
    cells = json.loads(out.read_text())['cells']
    assert [(c['strategy'], c['delay_s'], c['episodes']) for c in cells] == [
        ('sync', 0.0, 1), ('sync', 0.6, 1), ('rtc', 0.0, 1), ('rtc', 0.6, 1)]
    # 30 ticks of delay: sync holds after every chunk, and so does RTC here (d > H - s, the
    # warning's case); without delay neither pauses.
    assert [c['pauses'] > 0 for c in cells] == [False, True, False, True]
    assert all(c['diverged'] in (0, 1) for c in cells)


def test_an_episode_whose_physics_diverges_ends_as_a_failure(sim, adapter):
    policy = ScriptedPolicy(sim)

    def runaway(observation):
        if policy.calls:  # the second chunk: the arms run away
            sim._physics.data.qvel[:] = 1e20
        return policy(observation)
    execution = ExecutionConfig(strategy='sync', control_rate_hz=RATE_HZ, horizon=HORIZON,
                                execute_steps=EXECUTE)
    episode = evaluate.run_episode(sim, runaway, adapter, seed=3, execution=execution,
                                   steps=STEPS)
    assert episode.diverged and len(episode.rewards) == EXECUTE
    # The next episode starts clean.
    assert not evaluate.run_episode(sim, ScriptedPolicy(sim), adapter, seed=4,
                                    execution=execution, steps=STEPS).diverged


def test_main_refuses_a_negative_delay_with_the_usage_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(['--delay', '-0.1'])
    assert exit_info.value.code == 2
    assert 'finite number of seconds >= 0; got -0.1' in capsys.readouterr().err
