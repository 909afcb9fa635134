"""
Run the simulated ALOHA demo headless for a few seconds over real ROS 2, and test its helpers.

The demo starts the sim node and the pi0 node (tiny random model) as processes; the test checks
that commands flowed, the simulated joints moved and every command stayed within the limits of
the robot config, and that the plot, video and summary were written.
"""

import json
import math

from embodiment_adapters import load_robot_config
import numpy as np
from pi0_policy.ros import demo
from PIL import Image as PilImage
import pytest
import yaml

DEMO_SECONDS = 5.0
# The random model's commands must move some simulated joint by more than this (rad).
MIN_MOTION = 0.05


@pytest.fixture(scope='module')
def result(tmp_path_factory):
    """Run the demo once for all the tests of this module."""
    out = tmp_path_factory.mktemp('sim_demo')
    return demo.run_demo(demo.DemoOptions(duration=DEMO_SECONDS, output_dir=out,
                                          video_format='gif'), log=print), out


def test_commands_flowed_on_every_interface(result):
    demo_result, _ = result
    robot = load_robot_config('aloha')
    messages = demo_result.summary['commands']['messages']
    for command in robot.commands:
        assert messages.get(command.topic, 0) > 0, f'no command on {command.topic}'
    assert demo_result.summary['inference']['chunks'] > 0
    assert demo_result.summary['policy']['ticks'] > 0


def test_simulated_joints_moved(result):
    demo_result, _ = result
    motion = {name: np.ptp([v for _, v in samples])
              for name, samples in demo_result.measured.items()}
    assert max(motion.values()) > MIN_MOTION, motion
    assert demo_result.summary['sim']['steps'] > 0


def test_every_command_within_the_robot_config_limits(result):
    demo_result, _ = result
    joints = {joint.name: joint for joint in load_robot_config('aloha').joints}
    checked = 0
    for name, samples in demo_result.commands.items():
        assert name in joints, f'command for {name!r}, which the robot config does not list'
        values = np.array([v for _, v in samples])
        assert np.all(np.isfinite(values))
        assert values.min() >= joints[name].lower - demo.LIMIT_TOLERANCE, name
        assert values.max() <= joints[name].upper + demo.LIMIT_TOLERANCE, name
        checked += len(values)
    assert checked > 0
    assert demo_result.violations == []
    assert demo_result.summary['commands']['limit_violations'] == 0


def test_outputs_written(result):
    demo_result, out = result
    summary = json.loads((out / demo.SUMMARY_FILE).read_text())
    assert summary['policy']['ticks'] == demo_result.summary['policy']['ticks']
    assert math.isfinite(summary['inference']['latency_p50_ms'])
    with PilImage.open(out / demo.PLOT_FILE) as plot:
        assert plot.format == 'PNG' and plot.width > 0
    with PilImage.open(out / f'{demo.VIDEO_STEM}.gif') as video:
        assert video.n_frames > 1
    assert (out / f'{demo.POLICY_NODE_NAME}.log').exists()
    params = yaml.safe_load((out / demo.PARAMS_OUT_FILE).read_text())
    assert params[demo.POLICY_NODE_NAME]['ros__parameters']['checkpoint'] == ''


def test_limit_violations_counts_values_outside():
    adapter = type('A', (), {'action_names': ('a', 'b'), 'lower': np.array([0.0, -1.0]),
                             'upper': np.array([1.0, 1.0])})()
    found = demo.limit_violations(adapter, {'a': [(0.0, 0.5), (0.1, 1.5)], 'b': [(0.0, -2.0)]})
    assert found == [('a', 1.5), ('b', -2.0)]


def test_options_and_arguments():
    options = demo.parse_args(['--duration', '3', '--output-dir', 'x', '--prompt', 'wave',
                               '--sim-time', '--video', 'gif'])
    assert (options.duration, str(options.output_dir), options.prompt, options.sim_time,
            options.video_format) == (3.0, 'x', 'wave', True, 'gif')
    with pytest.raises(ValueError, match=r'duration \(0.0\) must be > 0'):
        demo.DemoOptions(duration=0.0)
    with pytest.raises(ValueError, match="video_format 'avi' must be one of"):
        demo.DemoOptions(video_format='avi')


def test_params_file_sets_sim_time_for_both_nodes(tmp_path):
    params = demo.write_params(demo.DemoOptions(sim_time=True, prompt='yes'),
                               tmp_path / 'p.yaml')
    reread = yaml.safe_load((tmp_path / 'p.yaml').read_text())
    assert reread == params
    assert reread[demo.SIM_NODE_NAME]['ros__parameters']['sim_time'] is True
    policy = reread[demo.POLICY_NODE_NAME]['ros__parameters']
    assert policy['use_sim_time'] is True and policy['prompt'] == 'yes'
    assert policy['autostart'] is True


def test_policy_node_name_matches_the_node():
    from pi0_policy.ros import policy_node
    assert demo.POLICY_NODE_NAME == policy_node.NODE_NAME
