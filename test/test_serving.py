"""
The openpi protocol: codec, observation formats, ``pi0-policy serve`` and the client backends.

Real peers over loopback: openpi-client's ``WebsocketClientPolicy`` against our server, our
``RemotePolicy`` against our server (in a thread and as a child process), and a small
misbehaving websocket server for malformed responses. The tiny random π0 runs on the CPU.
"""

import asyncio
import os
import signal
import threading
import time
import urllib.error
import urllib.request

from embodiment_adapters import load_adapter
import msgpack
import numpy as np
from openpi_client import msgpack_numpy as openpi_msgpack
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from pi0_policy.runtime.executor_base import RTC_DELAY_KEY, RTC_EXECUTE_KEY, RTC_LEFTOVER_KEY
from pi0_policy.runtime.pipeline import NOISE_KEY
from pi0_policy.runtime.policy import Pi0Policy
from pi0_policy.serving import codec
from pi0_policy.serving.child import SubprocessPolicy
from pi0_policy.serving.client import RemoteConfig, RemotePolicy
from pi0_policy.serving.formats import ObservationMapping, serving_for
from pi0_policy.serving.server import (
    PolicyServer, ServerConfig, ServerThread)
import pytest
import torch
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect as sync_connect

# Batched rows may differ from single inferences by float32 reassociation in the matmuls.
BATCH_ATOL = 1e-5
TIMEOUT_S = 30.0  # generous: the 2-core CI machine is shared
API_KEY = 'test-key-123'


def wait_for(condition, timeout: float = TIMEOUT_S):
    """Poll ``condition`` until it is truthy; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f'condition not met within {timeout} s')


def observation(policy: Pi0Policy, seed: int) -> dict:
    """Return an example observation with fixed noise (deterministic inference)."""
    obs = policy.example_observation(seed)
    rng = np.random.default_rng(seed)
    obs[NOISE_KEY] = rng.standard_normal(
        (policy.action_horizon, policy.config.action_dim)).astype(np.float32)
    return obs


@pytest.fixture(scope='module', autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope='module')
def aloha_policy() -> Pi0Policy:
    return Pi0Policy.from_checkpoint(None, 'aloha')


@pytest.fixture
def server(aloha_policy):
    """Serve the tiny ALOHA policy on a free loopback port."""
    thread = ServerThread(PolicyServer(aloha_policy, serving_for('aloha'),
                                       ServerConfig(port=0, max_request_bytes=4_000_000)))
    yield thread
    thread.stop()


# ----- codec ------------------------------------------------------------------------------------
def test_codec_speaks_openpi_clients_wire_format():
    """Frames from openpi-client decode here and ours decode there, arrays bit-identical."""
    message = {'images/cam_high': np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
               'state': np.linspace(-1, 1, 14), 'prompt': 'pick', 'n': np.float32(2.5)}
    for frame in (openpi_msgpack.packb(message), codec.packb(message)):
        for decoded in (codec.unpackb(frame), openpi_msgpack.unpackb(frame)):
            assert decoded['prompt'] == 'pick' and decoded['n'] == np.float32(2.5)
            for key in ('images/cam_high', 'state'):
                assert decoded[key].dtype == message[key].dtype
                assert np.array_equal(decoded[key], message[key])


@pytest.mark.parametrize('frame, expected', [
    (b'\xc1', 'not valid msgpack'),
    (msgpack.packb({b'__ndarray__': True, b'data': b'\x00' * 3, b'dtype': '<f4',
                    b'shape': [2]}), 'carries 3 bytes; expected 8'),
    (msgpack.packb({b'__ndarray__': True, b'data': b'', b'dtype': '|O', b'shape': [0]}),
     'refused dtype'),
    (msgpack.packb({b'__ndarray__': True, b'data': b'', b'dtype': '<f4', b'shape': [-1]}),
     'non-negative integers'),
])
def test_codec_refuses_malformed_frames(frame, expected):
    with pytest.raises(ValueError, match=expected):
        codec.unpackb(frame)


def test_codec_refuses_object_arrays():
    with pytest.raises(ValueError, match='object, void and complex'):
        codec.packb({'x': np.array([object()])})


# ----- formats ----------------------------------------------------------------------------------
def test_droid_format_round_trips_a_franka_observation():
    adapter = load_adapter('franka')
    mapping = ObservationMapping(adapter, serving_for('franka'))
    example = adapter.make_example(np.random.default_rng(0), image_hw=(8, 10))
    state = adapter.state_from_joint_states(example['names'], example['positions'])
    obs = {'images': example['images'], 'state': state, 'prompt': 'go'}
    request = mapping.to_request(obs)
    assert sorted(request) == sorted(['observation/exterior_image_1_left',
                                      'observation/wrist_image_left', 'observation/joint_position',
                                      'observation/gripper_position', 'prompt'])
    assert request['observation/joint_position'].shape == (7,)
    assert request['observation/gripper_position'].shape == (1,)
    assert request['observation/wrist_image_left'].shape == (8, 10, 3)  # DROID sends HWC
    back = mapping.from_request(request)
    assert np.array_equal(back['state'], state)
    for cam, image in obs['images'].items():
        assert np.array_equal(back['images'][cam], image)


def test_aloha_format_accepts_chw_hwc_and_float_images():
    adapter = load_adapter('aloha')
    mapping = ObservationMapping(adapter, serving_for('aloha'))
    image = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    request = {'state': np.zeros(14), 'prompt': 'x',
               'images/cam_high': image.transpose(2, 0, 1),
               'images/cam_left_wrist': image,
               'images/cam_right_wrist': (image / 255.0).transpose(2, 0, 1)}
    images = mapping.from_request(request)['images']
    assert np.array_equal(images['cam_high'], image)
    assert np.array_equal(images['cam_left_wrist'], image)
    assert np.abs(images['cam_right_wrist'].astype(int) - image).max() <= 1


@pytest.mark.parametrize('change, expected', [
    (lambda r: r.pop('state'), r"lacks \['state'\]"),
    (lambda r: r.pop('images/cam_high'), 'lacks'),
    (lambda r: r.update({'images/cam_top': r['images/cam_high']}), 'unknown keys'),
    (lambda r: r.update({'state': np.zeros(13)}), 'expected 14 numbers'),
    (lambda r: r.update({'prompt': 3}), 'expected a str'),
    (lambda r: r.update({'images/cam_high': np.zeros((4, 4), np.uint8)}), 'image array'),
])
def test_a_bad_request_names_what_is_wrong(change, expected):
    mapping = ObservationMapping(load_adapter('aloha'), serving_for('aloha'))
    request = {'state': np.zeros(14), 'prompt': 'x',
               'images/cam_high': np.zeros((3, 4, 4), np.uint8)}
    change(request)
    with pytest.raises(ValueError, match=expected):
        mapping.from_request(request)


# ----- server with openpi's client --------------------------------------------------------------
def test_openpi_client_gets_the_in_process_actions(server, aloha_policy):
    """openpi-client's WebsocketClientPolicy gets exactly Pi0Policy.infer's numbers."""
    client = WebsocketClientPolicy(server.url)
    metadata = client.get_server_metadata()
    assert metadata['robot'] == 'aloha' and metadata['action_horizon'] == 50
    assert metadata['action_dim'] == 14 and metadata['reset_pose'] == [0, -1.5, 1.5, 0, 0, 0]
    assert metadata['model']['random_tiny'] is True
    for seed in (1, 2):
        obs = observation(aloha_policy, seed)
        response = client.infer(server.server.mapping.to_request(obs))
        expected = aloha_policy.infer(obs).actions
        assert response['actions'].dtype == expected.dtype
        assert np.array_equal(response['actions'], expected)
        assert response['policy_timing']['infer_ms'] > 0
    assert 'prev_total_ms' in response['server_timing']


def test_openpi_client_droid_dict_gets_the_in_process_actions():
    """The DROID dict (HWC images, joint/gripper split) of openpi's DROID client."""
    policy = Pi0Policy.from_checkpoint(None, 'franka_droid')
    thread = ServerThread(PolicyServer(policy, serving_for('franka_droid'), ServerConfig(port=0)))
    try:
        client = WebsocketClientPolicy(thread.url)
        assert client.get_server_metadata()['openpi_format'] == 'droid'
        obs = observation(policy, 7)
        request = thread.server.mapping.to_request(obs)
        assert request['observation/joint_position'].shape == (7,)
        assert np.array_equal(client.infer(request)['actions'], policy.infer(obs).actions)
    finally:
        thread.stop()


def test_healthz_and_the_api_key(aloha_policy):
    thread = ServerThread(PolicyServer(aloha_policy, serving_for('aloha'),
                                       ServerConfig(port=0, api_key=API_KEY)))
    try:
        url = f'http://127.0.0.1:{thread.server.port}/healthz'
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:
            assert reply.status == 200 and reply.read() == b'OK\n'
        for key in (None, 'wrong-key'):
            with pytest.raises(InvalidStatus, match='401'):
                WebsocketClientPolicy(thread.url, api_key=key)
        client = WebsocketClientPolicy(thread.url, api_key=API_KEY)
        obs = observation(aloha_policy, 3)
        actions = client.infer(thread.server.mapping.to_request(obs))['actions']
        assert np.array_equal(actions, aloha_policy.infer(obs).actions)
    finally:
        thread.stop()


@pytest.mark.parametrize('frame, expected', [
    ('hello', 'text frame'),
    (b'\x93\x01', 'not valid msgpack'),
    (codec.packb({'state': np.zeros(3), 'prompt': 'x'}), "lacks ['images/cam_high']"),
    (b'\x00' * 4_000_001, 'more than max_request_bytes'),
], ids=['text', 'not-msgpack', 'wrong-keys', 'oversized'])
def test_bad_frames_get_an_error_frame_and_others_are_still_served(
        server, aloha_policy, frame, expected):
    good = WebsocketClientPolicy(server.url)
    with sync_connect(server.url, max_size=None) as bad:
        bad.recv()  # metadata
        bad.send(frame)
        reply = bad.recv()
        assert isinstance(reply, str) and expected in reply
        with pytest.raises(ConnectionClosedError) as closed:
            bad.recv()
        assert closed.value.rcvd.code == 1011
    obs = observation(aloha_policy, 4)
    actions = good.infer(server.server.mapping.to_request(obs))['actions']
    assert np.array_equal(actions, aloha_policy.infer(obs).actions)


def test_requests_that_arrive_together_are_batched(server, aloha_policy):
    """While the model is busy, queued requests of three clients go into one model call."""
    clients = [WebsocketClientPolicy(server.url) for _ in range(3)]
    observations = [observation(aloha_policy, 10 + i) for i in range(3)]
    responses = [None] * 3

    def ask(i):
        responses[i] = clients[i].infer(server.server.mapping.to_request(observations[i]))

    queue = server.server._queue
    with aloha_policy._lock:  # the model is "busy": the first request blocks in the batcher
        threads = [threading.Thread(target=ask, args=(0,))]
        threads[0].start()
        wait_for(lambda: server.server.batches == 0 and queue.qsize() == 0
                 and server.server.requests == 0 and threads[0].is_alive())
        time.sleep(0.2)  # request 0 is now waiting on the lock inside the batcher
        threads += [threading.Thread(target=ask, args=(i,)) for i in (1, 2)]
        for t in threads[1:]:
            t.start()
        wait_for(lambda: queue.qsize() == 2)
    for t in threads:
        t.join(TIMEOUT_S)
    sizes = [r['server_timing']['batch_size'] for r in responses]
    assert sizes == [1, 2, 2]
    for obs, response in zip(observations, responses):
        np.testing.assert_allclose(response['actions'], aloha_policy.infer(obs).actions,
                                   atol=BATCH_ATOL, rtol=0)


# ----- the node's client backends ---------------------------------------------------------------
def test_remote_policy_matches_in_process_inference(server, aloha_policy):
    remote = RemotePolicy(aloha_policy.adapter, RemoteConfig(url=server.url))
    try:
        assert remote.action_horizon == aloha_policy.action_horizon
        obs = observation(aloha_policy, 5)
        result = remote.infer(obs)  # 480x640 cameras are resized to 224 before sending
        assert np.array_equal(result.actions, aloha_policy.infer(obs).actions)
        assert result.unified_actions.shape == (50, 18)
        assert remote.health().connected
    finally:
        remote.close()


def test_an_unreachable_server_names_the_url_and_the_reason():
    adapter = load_adapter('mock')
    with pytest.raises(ConnectionError,
                       match=r'ws://127\.0\.0\.1:9 unreachable: ConnectionRefused'):
        RemotePolicy(adapter, RemoteConfig(url='ws://127.0.0.1:9', connect_timeout=5.0))
    with pytest.raises(ValueError, match="must look like 'ws://host:port'"):
        RemoteConfig(url='http://x:1')


def test_a_server_of_another_robot_is_refused(server):
    with pytest.raises(ValueError, match='serves 14-dim actions'):
        RemotePolicy(load_adapter('mock'), RemoteConfig(url=server.url))


class MisbehavingServer:
    """A websocket server that answers every request with one fixed (bad) response."""

    def __init__(self, response, metadata=None) -> None:
        self.response, self.connections = response, 0
        self.metadata = metadata or {'action_horizon': 50, 'action_dim': 4}
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(TIMEOUT_S)

    def _run(self, ready) -> None:
        async def handler(ws):
            self.connections += 1
            await ws.send(codec.packb(self.metadata))
            async for _ in ws:
                await ws.send(self.response)

        async def main():
            self.stop = asyncio.Event()
            async with serve(handler, '127.0.0.1', 0) as srv:
                self.port = srv.sockets[0].getsockname()[1]
                ready.set()
                await self.stop.wait()
        self.loop.run_until_complete(main())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(TIMEOUT_S)


def test_a_foreign_server_is_refused_for_a_robot_with_joint_velocity_actions():
    """A server that is not ours (openpi's DROID) returns velocities: never commanded."""
    adapter = load_adapter('franka_droid')
    assert adapter.velocity_mask.any()
    bad = MisbehavingServer(codec.packb({'actions': np.zeros((50, adapter.dof))}),
                            metadata={'action_horizon': 50})  # no 'robot': not ours
    try:
        with pytest.raises(ValueError, match='declares joint-velocity actions: its velocities '
                                             'would be commanded as positions'):
            RemotePolicy(adapter, RemoteConfig(url=f'ws://127.0.0.1:{bad.port}'))
        # Control: the same foreign server is accepted for a robot with absolute joint actions.
        mock = load_adapter('mock')
        assert not mock.velocity_mask.any()
        RemotePolicy(mock, RemoteConfig(url=f'ws://127.0.0.1:{bad.port}')).close()
    finally:
        bad.close()


@pytest.mark.parametrize('response, expected', [
    (codec.packb({'actions': np.zeros((50, 3))}), r'shape \(50, 3\)'),
    (codec.packb({'actions': np.zeros((49, 4))}), r'shape \(49, 4\)'),
    (codec.packb({'actions': np.zeros((50, 4), np.int32)}), 'dtype int32'),
    (codec.packb({'actions': np.full((50, 4), np.nan)}), 'NaN/Inf'),
    (codec.packb({'nothing': 1}), "expected a dict with 'actions'"),
    ('Traceback: boom', 'answered with an error: Traceback: boom'),
])
def test_malformed_responses_are_rejected_and_the_client_reconnects(response, expected):
    bad = MisbehavingServer(response)
    lost = []
    remote = RemotePolicy(load_adapter('mock'), RemoteConfig(url=f'ws://127.0.0.1:{bad.port}'),
                          on_disconnect=lost.append)
    try:
        obs = load_adapter('mock').make_example(np.random.default_rng(0))
        state = remote.adapter.state_from_joint_states(obs['names'], obs['positions'])
        with pytest.raises(ValueError, match=expected):
            remote.infer({'images': obs['images'], 'state': state, 'prompt': 'x'})
        wait_for(lambda: bad.connections == 2 and remote.connected)  # dropped, then reopened
        assert lost and remote.reconnects == 1
    finally:
        remote.close()
        bad.close()


def test_subprocess_backend_survives_a_killed_server():
    """The child is killed: infer fails at once with the reason, a new child takes over."""
    adapter = load_adapter('mock')
    reference = Pi0Policy.from_checkpoint(None, adapter)
    lost = []
    child = SubprocessPolicy(adapter, 'mock', ['--torch-threads', '1'], on_disconnect=lost.append)
    try:
        obs = observation(reference, 6)
        expected = reference.infer(obs).actions
        assert np.array_equal(child.infer(obs).actions, expected)
        os.kill(child.pid, signal.SIGKILL)
        wait_for(lambda: lost)
        assert 'lost' in lost[0] and not child.health().connected
        with pytest.raises(ConnectionError, match='not connected'):
            child.infer(obs)
        wait_for(lambda: child.remote.connected, timeout=60.0)
        assert child.health().restarts == 1
        assert np.array_equal(child.infer(obs).actions, expected)
    finally:
        child.close()
    assert child.pid is None


def test_remote_policy_carries_the_rtc_keys(server, aloha_policy):
    """The leftover, d and s travel as request keys; the server answers with the delay used."""
    remote = RemotePolicy(aloha_policy.adapter, RemoteConfig(url=server.url))
    try:
        obs = observation(aloha_policy, 6)
        first = aloha_policy.infer(obs)
        guided = {**obs, RTC_LEFTOVER_KEY: first.actions[20:], RTC_DELAY_KEY: 4,
                  RTC_EXECUTE_KEY: 20}
        result = remote.infer(guided)
        assert result.rtc_delay == 4
        np.testing.assert_allclose(result.actions, aloha_policy.infer(guided).actions,
                                   atol=BATCH_ATOL)
        assert remote.infer(obs).rtc_delay is None  # no keys: no guidance
    finally:
        remote.close()
