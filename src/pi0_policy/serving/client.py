"""
Policy backends for the node: the interface, and a client of any openpi-protocol server.

``PolicyBackend`` is what the node's inference thread calls: ``Pi0Policy`` implements it in the
node's process; ``RemotePolicy`` sends the observation to an openpi-protocol server (ours, or
openpi's own ``serve_policy.py``) and returns the robot-native chunk as a ``PolicyResult``.

``RemotePolicy`` runs one asyncio loop in a daemon thread. It notices a dropped connection at
once (``on_disconnect`` tells the node, which holds) and reconnects with exponential backoff;
``infer`` meanwhile raises ``ConnectionError`` with the URL, the reason and the attempt count.
A response that is an error frame, not a dict, or whose actions have the wrong shape, a
non-float dtype or NaN/Inf is rejected with ``ValueError``; the connection is then dropped and
reopened, so a late answer can never be taken for the next request's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
import logging
import threading
import time
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import urlsplit

from embodiment_adapters import EmbodimentAdapter, unified
import numpy as np
from pi0_policy.runtime import transforms
from pi0_policy.runtime.pipeline import IMAGES_KEY, Observation, PROMPT_KEY
from pi0_policy.runtime.policy import (
    MS_PER_S, PolicyResult, TIME_MODEL, TIME_POSTPROCESS, TIME_PREPROCESS, TIME_TOTAL)
from pi0_policy.serving import codec
from pi0_policy.serving.formats import ObservationMapping, serving_for
from pi0_policy.serving.server import (
    ACTIONS_KEY, AUTH_HEADER, AUTH_SCHEME, POLICY_TIMING_KEY, RTC_DELAY_RESPONSE_KEY,
    SERVER_TIMING_KEY)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

_LOG = logging.getLogger(__name__)

# Timing keys a remote PolicyResult adds (milliseconds).
TIME_SERVER = 'server'
TIME_NETWORK = 'network'
# Image side the client resizes to (with padding) before sending, as openpi's clients do; the
# server's resize of an image of this size is a no-op, so the numbers equal in-process inference.
DEFAULT_SEND_IMAGE_SIZE = 224
# Seconds between keepalive pings (a peer that vanishes without closing is noticed after
# PING_INTERVAL + PING_TIMEOUT).
PING_INTERVAL = 2.0
PING_TIMEOUT = 10.0


@dataclass(frozen=True)
class BackendHealth:
    """Connection state of a subprocess/remote backend (reported in /diagnostics)."""

    # The server's URL.
    url: str
    # Whether a connection is open.
    connected: bool
    # Why it is down, and the reconnection attempts so far ('' while connected).
    detail: str
    # Successful reconnections since start.
    reconnects: int
    # Child servers restarted (subprocess backend).
    restarts: int = 0


class PolicyBackend(Protocol):
    """What the node's inference thread needs from a policy (``Pi0Policy`` is one)."""

    @property
    def action_horizon(self) -> int:
        """Return the number of actions T per chunk."""

    def infer(self, observation: Observation) -> PolicyResult:
        """Return the (T, D) robot-native chunk of one observation."""

    def warmup(self) -> PolicyResult:
        """Run one example inference (allocations, connection, compilation)."""

    def close(self) -> None:
        """Release the model or connection; ``infer`` then raises."""


@dataclass(frozen=True)
class RemoteConfig:
    """Where and how ``RemotePolicy`` reaches its server."""

    # ws://host:port of an openpi-protocol server.
    url: str
    # Sent as 'Authorization: Api-Key <key>' when set.
    api_key: str | None = None
    # openpi observation format (formats.FORMATS); None: the robot's (formats.ROBOT_FORMATS).
    openpi_format: str | None = None
    # Seconds a request may take before the connection is dropped and reopened.
    request_timeout: float = 10.0
    # Seconds the first connection (configure) may take.
    connect_timeout: float = 10.0
    # First and largest wait (s) between reconnection attempts (doubling in between).
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    # Images are resized with padding to this side before sending; 0 sends them as they are.
    send_image_size: int = DEFAULT_SEND_IMAGE_SIZE

    def __post_init__(self) -> None:
        """Check the URL and the bounds."""
        parts = urlsplit(self.url)
        if parts.scheme not in ('ws', 'wss') or not parts.hostname:
            raise ValueError(f"policy_url {self.url!r} must look like 'ws://host:port' "
                             "(or 'wss://' behind a TLS proxy).")
        for name in ('request_timeout', 'connect_timeout', 'backoff_initial', 'backoff_max'):
            if getattr(self, name) <= 0:
                raise ValueError(f'{name} {getattr(self, name)} must be > 0 seconds.')
        if self.send_image_size < 0:
            raise ValueError(f'send_image_size {self.send_image_size} must be >= 0.')


class RemotePolicy:
    """Infer through an openpi-protocol server; see the module docstring."""

    def __init__(self, adapter: EmbodimentAdapter, config: RemoteConfig, *,
                 on_disconnect: Callable[[str], None] | None = None,
                 before_reconnect: Callable[[], None] | None = None) -> None:
        """
        Connect and read the server's metadata.

        Args:
            adapter: the robot's adapter (observation mapping, action width).
            config: server address and timeouts.
            on_disconnect: called (from the client's thread) with the reason when an open
                connection drops; the node holds at once.
            before_reconnect: called before each reconnection attempt (the subprocess backend
                restarts a dead server there).

        Raises:
            ConnectionError: the server is unreachable or refused the connection (the message
                names the URL and the reason).
            ValueError: the server's metadata contradicts the robot (action width).

        """
        self.adapter = adapter
        self.config = config
        self.mapping = ObservationMapping(adapter, serving_for(adapter.name, config.openpi_format))
        self._on_disconnect = on_disconnect
        self._before_reconnect = before_reconnect
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name='pi0_policy_client',
                                        daemon=True)
        self._thread.start()
        self._ws: ClientConnection | None = None
        self._reconnecting: asyncio.Task | None = None
        self._closed = False
        self.metadata: dict[str, Any] = {}
        self._horizon: int | None = None
        # Why the connection is down (None while connected) and reconnection bookkeeping.
        self.last_error: str | None = None
        self.attempts = 0
        self.reconnects = 0
        try:
            self._call(self._connect(), config.connect_timeout + 1.0)
        except BaseException:
            self.close()
            raise
        self._check_metadata()

    # ----- properties ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Return the server URL."""
        return self.config.url

    @property
    def connected(self) -> bool:
        """Return whether a connection is open."""
        return self._ws is not None

    @property
    def action_horizon(self) -> int:
        """Return T: from the metadata, else learned from the first response."""
        if self._horizon is None:
            raise RuntimeError(f'The server at {self.url} announced no action_horizon; call '
                               'warmup() first to learn it from a response.')
        return self._horizon

    def health(self) -> BackendHealth:
        """Return the connection state."""
        connected = self.connected
        detail = '' if connected else f'{self.last_error}; reconnect attempt {self.attempts}'
        return BackendHealth(self.url, connected, detail, self.reconnects)

    # ----- public API -----------------------------------------------------------------------
    def infer(self, observation: Observation) -> PolicyResult:
        """
        Send one observation and return the server's chunk.

        Raises:
            ConnectionError: not connected (reconnecting), or the connection dropped / timed out.
            ValueError: the observation cannot be encoded, or the response was an error frame or
                malformed (the connection is then reopened).
            RuntimeError: the client was closed.

        """
        if self._closed:
            raise RuntimeError(f'RemotePolicy for {self.url} was closed; create a new one.')
        start = time.perf_counter()
        frame = codec.packb(self._request(observation))
        encoded = time.perf_counter()
        response = self._call(self._exchange(frame), self.config.request_timeout + 1.0)
        received = time.perf_counter()
        try:
            actions = self._check_response(response)
        except ValueError:
            self._call(self._drop('malformed response'), self.config.request_timeout)
            raise
        done = time.perf_counter()
        return self._result(observation, actions, response, start, encoded, received, done)

    def warmup(self) -> PolicyResult:
        """Infer once on an example observation of the robot (learns T if not announced)."""
        example = self.adapter.make_example(np.random.default_rng(0))
        state = self.adapter.state_from_joint_states(
            example['names'], example['positions'], example.get('base_velocity'))
        return self.infer({'images': example['images'], 'state': state,
                           'prompt': example['prompt']})

    def close(self) -> None:
        """Close the connection and stop the client's thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5.0)
            except (TimeoutError, RuntimeError):
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()

    # ----- request / response -----------------------------------------------------------------
    def _request(self, observation: Observation) -> dict[str, Any]:
        """Build the openpi request, images resized with padding to send_image_size."""
        size = self.config.send_image_size
        if size:
            observation = dict(observation)
            observation[IMAGES_KEY] = {
                cam: transforms.resize_with_pad(np.asarray(image), size, size)
                for cam, image in observation[IMAGES_KEY].items()}
        return self.mapping.to_request(observation)

    def _check_response(self, response: Any) -> np.ndarray:
        """Return the validated (T, D) actions; ValueError names what is wrong."""
        where = f'Policy server {self.url}'
        if isinstance(response, str):
            raise ValueError(f'{where} answered with an error: {response.strip()[-500:]}')
        if not isinstance(response, Mapping) or ACTIONS_KEY not in response:
            keys = sorted(map(str, response)) if isinstance(response, Mapping) else None
            raise ValueError(f"{where} sent {type(response).__name__} {keys or ''}; expected a "
                             f"dict with '{ACTIONS_KEY}'.")
        actions = response[ACTIONS_KEY]
        dof = self.adapter.dof
        if (not isinstance(actions, np.ndarray) or actions.ndim != 2 or actions.shape[1] != dof
                or actions.shape[0] < 1
                or (self._horizon is not None and actions.shape[0] != self._horizon)):
            shape = getattr(actions, 'shape', type(actions).__name__)
            raise ValueError(f'{where} sent actions of shape {shape}; expected '
                             f'({self._horizon or "T"}, {dof}) for robot {self.adapter.name!r} '
                             f'{list(self.adapter.action_names)}.')
        if actions.dtype.kind != 'f':
            raise ValueError(f'{where} sent actions of dtype {actions.dtype}; expected floats.')
        if not np.isfinite(actions).all():
            raise ValueError(f'{where} sent actions with NaN/Inf at rows '
                             f'{np.unique(np.argwhere(~np.isfinite(actions))[:, 0]).tolist()}.')
        if self._horizon is None:
            self._horizon = int(actions.shape[0])
        return np.array(actions, dtype=np.float64)

    def _result(self, observation: Observation, actions: np.ndarray, response: Mapping,
                start: float, encoded: float, received: float, done: float) -> PolicyResult:
        """Wrap the actions as a PolicyResult (timings in ms, as Pi0Policy reports them)."""
        server_ms = _number((response.get(SERVER_TIMING_KEY) or {}).get('infer_ms'))
        model_ms = _number((response.get(POLICY_TIMING_KEY) or {}).get('infer_ms'))
        roundtrip = (received - encoded) * MS_PER_S
        timing = {
            TIME_PREPROCESS: (encoded - start) * MS_PER_S,
            TIME_MODEL: model_ms if model_ms is not None else roundtrip,
            TIME_POSTPROCESS: (done - received) * MS_PER_S,
            TIME_TOTAL: (done - start) * MS_PER_S,
            TIME_SERVER: server_ms if server_ms is not None else roundtrip,
            TIME_NETWORK: roundtrip - (server_ms or 0.0),
        }
        slots = {c.name: c.model_slot for c in self.adapter.cameras}
        masks = np.zeros(len(unified.MODEL_IMAGE_KEYS), dtype=bool)  # (C,)
        masks[[slots[c] for c in observation[IMAGES_KEY] if slots.get(c) is not None]] = True
        return PolicyResult(
            actions=actions, unified_actions=np.asarray(self.adapter.actions_to_unified(actions)),
            timing=MappingProxyType(timing), prompt=str(observation.get(PROMPT_KEY, '')),
            tokens=np.zeros(0, np.int64), num_tokens=0, prompt_truncated=False,
            image_masks=masks, rtc_delay=_rtc_delay(response.get(RTC_DELAY_RESPONSE_KEY)))

    def _check_metadata(self) -> None:
        dim, horizon = self.metadata.get('action_dim'), self.metadata.get('action_horizon')
        if dim is not None and dim != self.adapter.dof:
            self.close()
            raise ValueError(
                f'Policy server {self.url} serves {dim}-dim actions (robot '
                f"{self.metadata.get('robot')!r}) but robot {self.adapter.name!r} has "
                f'{self.adapter.dof}; start the server with --robot {self.adapter.name}.')
        if isinstance(horizon, int) and horizon > 0:
            self._horizon = horizon
        if 'robot' not in self.metadata and self.adapter.velocity_mask.any():
            # A pi0_policy server integrates joint velocities into position targets; another
            # server's velocities would be indistinguishable from positions: never command them.
            self.close()
            raise ValueError(
                f'Policy server {self.url} is not a pi0_policy server (metadata '
                f'{sorted(self.metadata)}) and robot {self.adapter.name!r} declares '
                'joint-velocity actions: its velocities would be commanded as positions. Serve '
                'the checkpoint '
                f'with `pi0-policy serve --robot {self.adapter.name}` instead, or use a robot '
                'config with absolute joint actions.')
        if 'robot' not in self.metadata:
            # openpi's serve_policy.py: its robot transforms decide the units of state/actions.
            _LOG.warning(
                'Policy server %s is not a pi0_policy server (metadata %s). The state is sent '
                "and the actions are taken in robot %r's units and order; check that the "
                "server's policy config uses the same conventions (README: openpi's server).",
                self.url, sorted(self.metadata), self.adapter.name)

    # ----- the client's loop (runs in its thread) -------------------------------------------
    def _call(self, coroutine, timeout: float) -> Any:
        """Run a coroutine on the client's loop and wait for it."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise ConnectionError(f'Policy server {self.url} did not answer within '
                                  f'{timeout:.1f} s.') from None

    async def _connect(self) -> None:
        """Open the connection and read the metadata frame; ConnectionError says why not."""
        headers = ({AUTH_HEADER: f'{AUTH_SCHEME} {self.config.api_key}'}
                   if self.config.api_key else None)
        self.attempts += 1
        try:
            ws = await asyncio.wait_for(connect(
                self.config.url, compression=None, max_size=None, additional_headers=headers,
                ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT, open_timeout=None),
                self.config.connect_timeout)
            try:
                metadata = codec.unpackb(await asyncio.wait_for(ws.recv(),
                                                                self.config.connect_timeout))
            except BaseException:
                await ws.close()
                raise
        except (OSError, InvalidHandshake, InvalidURI, ConnectionClosed, TimeoutError,
                ValueError) as error:
            self.last_error = f'{type(error).__name__}: {error}'
            raise ConnectionError(f'Policy server {self.url} unreachable: '
                                  f'{self.last_error}') from error
        if not isinstance(metadata, dict):
            await ws.close()
            raise ConnectionError(f'Policy server {self.url} sent {type(metadata).__name__} '
                                  'as metadata; expected a dict (is it an openpi server?).')
        self.metadata, self._ws, self.last_error = metadata, ws, None
        asyncio.get_running_loop().create_task(self._watch(ws))

    async def _watch(self, ws: ClientConnection) -> None:
        """Report a dropped connection at once and start reconnecting."""
        await ws.wait_closed()
        if self._ws is not ws or self._closed:
            return
        self._ws = None
        reason = f'connection to {self.url} lost (code {ws.close_code}: {ws.close_reason!r})'
        self.last_error = reason
        _LOG.error('%s; reconnecting.', reason)
        if self._on_disconnect is not None:
            self._on_disconnect(reason)
        self._start_reconnecting()

    def _start_reconnecting(self) -> None:
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Try again with exponential backoff until connected or closed."""
        delay = self.config.backoff_initial
        while not self._closed and self._ws is None:
            await asyncio.sleep(delay)
            delay = min(2.0 * delay, self.config.backoff_max)
            if self._before_reconnect is not None:
                self._before_reconnect()
            try:
                await self._connect()
            except ConnectionError as error:
                _LOG.debug('%s', error)
                continue
            self.reconnects += 1
            _LOG.info('Reconnected to %s after %d attempts.', self.url, self.attempts)
            self.attempts = 0

    async def _exchange(self, frame: bytes) -> Any:
        """Send one request and return the decoded response."""
        ws = self._ws
        if ws is None:
            raise ConnectionError(f'Policy server {self.url} is not connected ({self.last_error};'
                                  f' reconnecting, attempt {self.attempts}).')
        try:
            await ws.send(frame)
            reply = await asyncio.wait_for(ws.recv(), self.config.request_timeout)
        except TimeoutError:
            await self._drop(f'no answer within {self.config.request_timeout} s')
            raise ConnectionError(f'Policy server {self.url} did not answer within '
                                  f'{self.config.request_timeout} s; reconnecting.') from None
        except ConnectionClosed as error:
            text = f'connection to {self.url} lost during a request ({error})'
            raise ConnectionError(text) from error
        return reply if isinstance(reply, str) else codec.unpackb(reply)

    async def _drop(self, reason: str) -> None:
        """Close the connection (a late answer must not pair with the next request)."""
        ws = self._ws
        if ws is not None:
            self.last_error = f'{reason}; reconnecting'
            await ws.close()

    async def _shutdown(self) -> None:
        ws, self._ws = self._ws, None
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if ws is not None:
            await ws.close()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float, np.number)) else None


def _rtc_delay(value: Any) -> int | None:
    """Return the RTC delay a server reports, or None (no guidance, or a server without RTC)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        return None
    return int(value)
