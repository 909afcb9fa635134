"""
Serve a ``Pi0Policy`` over openpi's websocket protocol (``pi0-policy serve``).

Protocol (pi0_model_spec.md §8): on connect the server sends one binary frame, the metadata;
then every binary request frame (the robot's openpi observation dict, see ``formats``) gets one
binary response ``{'actions': (T, D), 'policy_timing': {...}, 'server_timing': {...}}`` with the
robot-native actions of ``Pi0Policy.infer``. A bad request (not msgpack, wrong keys or shapes,
over ``max_request_bytes``) or a failed inference is answered with the reason as a text frame and
closes that connection with 1011; every other connection keeps being served. ``GET /healthz``
answers 200 "OK". With an API key, the websocket upgrade requires
``Authorization: Api-Key <key>`` (else HTTP 401).

Threads: one asyncio loop does all I/O and decoding; inference runs in one worker thread. Requests
that are queued while the model runs are batched into the next model call (up to ``max_batch``),
so several clients share the model without waiting for each other in turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
import hmac
from http import HTTPStatus
import logging
import signal
import threading
import time
import traceback
from typing import Any

import pi0_policy
from pi0_policy.runtime.policy import (
    MS_PER_S, Pi0Policy, PolicyResult, TIME_MODEL, TIME_TOTAL)
from pi0_policy.serving import codec
from pi0_policy.serving.formats import ObservationMapping, RobotServing
from websockets.asyncio.server import serve, Server, ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

_LOG = logging.getLogger(__name__)

DEFAULT_HOST = '127.0.0.1'
DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024  # 3 cameras at 480x640 are about 2.8 MB
# Milliseconds the batcher waits for the other connected clients' requests before it runs a
# partial batch: clients answered together send again a few ms apart, and without the wait two
# back-to-back clients would alternate forever (each alone in the model).
DEFAULT_BATCH_WINDOW_MS = 3.0
# The websocket layer drops (close 1009, no error frame) frames over this multiple of
# max_request_bytes; frames between the two get the protocol's error frame.
TRANSPORT_LIMIT_FACTOR = 4
HEALTH_PATH = '/healthz'
AUTH_HEADER = 'Authorization'
AUTH_SCHEME = 'Api-Key'
# Keys of the response.
ACTIONS_KEY = 'actions'
POLICY_TIMING_KEY = 'policy_timing'
SERVER_TIMING_KEY = 'server_timing'
# Present when the chunk was sampled with Real-Time Chunking: the delay d it used (chunk steps).
RTC_DELAY_RESPONSE_KEY = 'rtc_delay'
# The close reason is a control frame payload (at most 123 bytes).
MAX_CLOSE_REASON = 120
# Line printed (and flushed) once the server listens; the subprocess backend waits for it.
LISTENING_PREFIX = 'pi0-policy serve: listening on '


@dataclass(frozen=True)
class ServerConfig:
    """How ``PolicyServer`` listens and what it accepts."""

    # Interface to bind; anything but loopback is an explicit choice (logged as a warning).
    host: str = DEFAULT_HOST
    # TCP port; 0 picks a free one (see PolicyServer.port and LISTENING_PREFIX).
    port: int = DEFAULT_PORT
    # When set, clients must send 'Authorization: Api-Key <key>'.
    api_key: str | None = None
    # Most requests per model call.
    max_batch: int = DEFAULT_MAX_BATCH
    # Larger request frames are answered with an error frame.
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    # Longest wait (ms) for more requests while fewer are queued than clients are connected.
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS

    def __post_init__(self) -> None:
        """Check the bounds."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f'port {self.port} must be in [0, 65535] (0 picks a free port).')
        if self.max_batch < 1:
            raise ValueError(f'max_batch {self.max_batch} must be at least 1.')
        if self.max_request_bytes < 1:
            raise ValueError(f'max_request_bytes {self.max_request_bytes} must be positive.')
        if not self.batch_window_ms >= 0.0:
            raise ValueError(f'batch_window_ms {self.batch_window_ms} must be >= 0.')
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError('api_key is empty; pass a non-empty key or none.')


def is_loopback(host: str) -> bool:
    """Return whether binding ``host`` keeps the server on this machine."""
    return host in ('localhost', '::1') or host.startswith('127.')


def server_metadata(policy: Pi0Policy, mapping: ObservationMapping,
                    config: ServerConfig) -> dict[str, Any]:
    """Return the metadata frame: what a client needs to talk to this policy."""
    adapter, fmt = policy.adapter, mapping.format
    info = policy.checkpoint_info
    metadata: dict[str, Any] = {
        'server': f'pi0_policy {pi0_policy.__version__}',
        'robot': adapter.name,
        'embodiment': adapter.family,
        'openpi_format': fmt.name,
        'observation_keys': mapping.keys,
        'action_horizon': policy.action_horizon,
        'action_dim': adapter.dof,
        'action_names': list(adapter.action_names),
        'state_names': list(adapter.state_names),
        'control_rate_hz': adapter.config.control_rate_hz,
        'max_batch': config.max_batch,
        'max_request_bytes': config.max_request_bytes,
        'model': {
            'checkpoint': None if info is None else str(info.weights_path),
            'layout': None if info is None else info.layout,
            'random_tiny': info is None,
            'device': str(policy.device),
            'dtype': str(policy.dtype).removeprefix('torch.'),
            'num_steps': policy.num_steps,
            'action_mode': policy.action_mode,
            'norm_stats_asset_id': policy.norm_stats_asset_id,
            'model_action_dim': policy.config.action_dim,
        },
    }
    if fmt.reset_pose is not None:
        metadata['reset_pose'] = list(fmt.reset_pose)
    return metadata


@dataclass
class _Pending:
    """One decoded request waiting for the model."""

    observation: Any
    future: asyncio.Future


class PolicyServer:
    """The openpi-protocol server of one policy; see the module docstring."""

    def __init__(self, policy: Pi0Policy, serving: RobotServing, config: ServerConfig) -> None:
        """
        Prepare the server (nothing listens until ``serve`` runs).

        Args:
            policy: a warmed-up policy; only the server's inference thread calls it.
            serving: the robot's openpi format (``formats.serving_for``).
            config: address, key and limits.

        """
        self.policy = policy
        self.config = config
        self.mapping = ObservationMapping(policy.adapter, serving)
        self.metadata = server_metadata(policy, self.mapping, config)
        self._metadata_frame = codec.packb(self.metadata)
        self._expected_auth = (f'{AUTH_SCHEME} {config.api_key}'.encode()
                               if config.api_key else None)
        self._queue: asyncio.Queue[_Pending] | None = None
        self._server: Server | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Counters (read by tests and logs).
        self.requests = 0
        self.errors = 0
        self.batches = 0
        # Open connections (the batch window waits only for requests that can still come).
        self.connections = 0
        # The port actually bound (config.port may be 0).
        self.port: int | None = None

    # ----- HTTP: health and authentication ----------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request
                         ) -> Response | None:
        if request.path == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, 'OK\n')
        if self._expected_auth is not None:
            given = request.headers.get(AUTH_HEADER, '').encode()
            if not hmac.compare_digest(given, self._expected_auth):
                _LOG.warning('Refused a connection from %s: missing or wrong API key.',
                             connection.remote_address)
                return connection.respond(
                    HTTPStatus.UNAUTHORIZED,
                    f'Missing or wrong API key: send the header "{AUTH_HEADER}: '
                    f'{AUTH_SCHEME} <key>".\n')
        return None

    # ----- one connection ---------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        peer = ws.remote_address
        _LOG.info('Client %s connected.', peer)
        prev_total_ms: float | None = None
        self.connections += 1
        try:
            await ws.send(self._metadata_frame)
            async for message in ws:
                start = time.perf_counter()
                try:
                    observation = self._decode(message)
                except ValueError as error:
                    return await self._fail(ws, f'Bad request: {error}')
                future = asyncio.get_running_loop().create_future()
                await self._queue.put(_Pending(observation, future))
                outcome, batch_size, batch_ms = await future
                if isinstance(outcome, BaseException):
                    return await self._fail(ws, ''.join(traceback.format_exception(outcome)))
                server_timing = {'infer_ms': batch_ms, 'batch_size': batch_size}
                if prev_total_ms is not None:
                    server_timing['prev_total_ms'] = prev_total_ms
                response = {
                    ACTIONS_KEY: outcome.actions,
                    POLICY_TIMING_KEY: {'infer_ms': outcome.timing[TIME_TOTAL],
                                        'model_ms': outcome.timing[TIME_MODEL]},
                    SERVER_TIMING_KEY: server_timing,
                }
                if outcome.rtc_delay is not None:
                    response[RTC_DELAY_RESPONSE_KEY] = outcome.rtc_delay
                await ws.send(codec.packb(response))
                self.requests += 1
                prev_total_ms = (time.perf_counter() - start) * MS_PER_S
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1
            _LOG.info('Client %s disconnected.', peer)

    def _decode(self, message: bytes | str) -> Any:
        """Return the observation of a request frame; ValueError says what is wrong."""
        if isinstance(message, str):
            raise ValueError('got a text frame; send the observation as one binary msgpack '
                             'frame (openpi_client.msgpack_numpy).')
        if len(message) > self.config.max_request_bytes:
            raise ValueError(f'the frame has {len(message)} bytes, more than max_request_bytes '
                             f'= {self.config.max_request_bytes}; send smaller images or raise '
                             '--max-request-bytes.')
        return self.mapping.from_request(codec.unpackb(message))

    async def _fail(self, ws: ServerConnection, text: str) -> None:
        """Send the error as a text frame and close with 1011 (openpi's error convention)."""
        self.errors += 1
        _LOG.warning('Request from %s refused: %s', ws.remote_address, text.strip())
        try:
            await ws.send(text)
            await ws.close(CloseCode.INTERNAL_ERROR, text.strip()[:MAX_CLOSE_REASON])
        except ConnectionClosed:
            pass

    # ----- batching ---------------------------------------------------------------------------
    async def _batcher(self) -> None:
        """Run queued requests through the model, as many per call as are waiting."""
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            while len(items) < self.config.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            await self._wait_for_more(items)
            items = [i for i in items if not i.future.cancelled()]
            if not items:
                continue
            start = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(
                    None, self._infer, [i.observation for i in items])
            except Exception as error:  # noqa: B902 - sent to each client as its error frame
                _LOG.exception('Inference of a batch of %d failed.', len(items))
                outcomes = [error] * len(items)
            batch_ms = (time.perf_counter() - start) * MS_PER_S
            self.batches += 1
            for item, outcome in zip(items, outcomes):
                if not item.future.done():
                    item.future.set_result((outcome, len(items), batch_ms))

    async def _wait_for_more(self, items: list[_Pending]) -> None:
        """Add requests arriving within the batch window while other clients may still send."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.batch_window_ms / MS_PER_S
        while len(items) < min(self.config.max_batch, self.connections):
            remaining = deadline - loop.time()
            if remaining <= 0.0:
                return
            try:
                items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                return

    def _infer(self, observations: Sequence[Any]) -> list[PolicyResult | Exception]:
        """Infer a batch (inference thread); a bad observation fails only its own request."""
        try:
            return self.policy.infer_batch(observations)
        except ValueError:
            if len(observations) == 1:
                return [self._infer_one(observations[0])]
            return [self._infer_one(o) for o in observations]
        except RuntimeError as error:
            return [error] * len(observations)

    def _infer_one(self, observation: Any) -> PolicyResult | Exception:
        try:
            return self.policy.infer(observation)
        except (ValueError, RuntimeError) as error:
            return error

    # ----- running ----------------------------------------------------------------------------
    async def serve(self, on_listening: Callable[[int], None] | None = None) -> None:
        """
        Listen until ``stop`` is called (or SIGINT/SIGTERM when run by ``run``).

        Args:
            on_listening: called with the bound port once the server accepts connections.

        """
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._stop = asyncio.Event()
        if not is_loopback(self.config.host):
            _LOG.warning('Serving on %s, reachable from other machines%s. The protocol is not '
                         'encrypted: use a private network or an SSH/TLS tunnel.',
                         self.config.host, '' if self.config.api_key else ' WITHOUT an API key')
        batcher = asyncio.create_task(self._batcher())
        try:
            async with serve(self._handle, self.config.host, self.config.port,
                             compression=None, process_request=self._process_request,
                             max_size=self.config.max_request_bytes * TRANSPORT_LIMIT_FACTOR
                             ) as server:
                self._server = server
                self.port = server.sockets[0].getsockname()[1]
                _LOG.info('Serving robot %r (%s format) on ws://%s:%d (max_batch %d).',
                          self.policy.adapter.name, self.mapping.format.name, self.config.host,
                          self.port, self.config.max_batch)
                if on_listening is not None:
                    on_listening(self.port)
                await self._stop.wait()
        finally:
            batcher.cancel()

    def stop(self) -> None:
        """Stop serving (thread-safe); open connections are closed."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)


def run(server: PolicyServer) -> None:
    """Serve in this thread until SIGINT/SIGTERM; print LISTENING_PREFIX + URL when ready."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)

        def ready(port: int) -> None:
            print(f'{LISTENING_PREFIX}ws://{server.config.host}:{port}', flush=True)
        await server.serve(ready)
    asyncio.run(main())


class ServerThread:
    """Run a ``PolicyServer`` in a background thread (tests, benchmarks, embedding)."""

    def __init__(self, server: PolicyServer, *, timeout: float = 30.0) -> None:
        """
        Start serving and wait until the server listens.

        Raises:
            RuntimeError: the server did not start within ``timeout`` seconds.

        """
        self.server = server
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name='pi0_policy_server', daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f'Policy server did not start within {timeout} s: '
                               f'{self._error!r}')

    @property
    def url(self) -> str:
        """Return the server's ws:// URL."""
        return f'ws://{self.server.config.host}:{self.server.port}'

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(lambda port: self._ready.set()))
        except BaseException as error:  # noqa: B902 - handed to the starting thread
            self._error = error
            self._ready.set()

    def stop(self) -> None:
        """Stop the server and join its thread."""
        self.server.stop()
        self._thread.join()
