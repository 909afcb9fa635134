"""
The ``pi0-policy serve`` command: load a policy for one robot and serve it over openpi's protocol.

Security defaults: the server binds 127.0.0.1 (another ``--host`` is logged as a warning), and
with ``--api-key`` (or the environment variable ``PI0_POLICY_API_KEY``) every connection must
send ``Authorization: Api-Key <key>``. The protocol itself is not encrypted.
"""

from __future__ import annotations

import argparse
import logging
import os

from pi0_policy.runtime.pipeline import ACTION_MODE_ROBOT, ACTION_MODES
from pi0_policy.runtime.policy import DEFAULT_NUM_STEPS, DTYPES, Pi0Policy
from pi0_policy.serving.formats import FORMATS, serving_for
from pi0_policy.serving.server import (
    DEFAULT_BATCH_WINDOW_MS, DEFAULT_HOST, DEFAULT_MAX_BATCH, DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_PORT, PolicyServer, run, ServerConfig)
import torch

# Environment variable read when --api-key is not given (keeps the key out of `ps`).
API_KEY_ENV = 'PI0_POLICY_API_KEY'
EXIT_OK = 0
EXIT_BAD_CONFIG = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser``."""
    parser.add_argument('--checkpoint', default=None,
                        help='openpi/LeRobot checkpoint dir (default: the tiny random model)')
    parser.add_argument('--robot', required=True,
                        help='robot config name or YAML path (observation format and adapter)')
    parser.add_argument('--openpi-format', choices=sorted(FORMATS), default=None,
                        help="observation dict the clients send (default: the robot's, "
                             'see serving/formats.py ROBOT_FORMATS)')
    parser.add_argument('--device', default='cpu', help="torch device, e.g. 'cuda:0'")
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='float32')
    parser.add_argument('--num-steps', type=int, default=DEFAULT_NUM_STEPS)
    parser.add_argument('--asset-id', default=None, help='norm stats asset id')
    parser.add_argument('--tokenizer', default=None, help='tokenizer .model file')
    parser.add_argument('--action-mode', choices=ACTION_MODES, default=ACTION_MODE_ROBOT)
    parser.add_argument('--seed', type=int, default=0, help='seed of the sampling noise')
    parser.add_argument('--host', default=DEFAULT_HOST,
                        help='interface to bind (default loopback; others log a warning)')
    parser.add_argument('--port', type=int, default=DEFAULT_PORT, help='0 picks a free port')
    parser.add_argument('--api-key', default=None,
                        help=f'require "Authorization: Api-Key <key>" (or set ${API_KEY_ENV})')
    parser.add_argument('--max-batch', type=int, default=DEFAULT_MAX_BATCH,
                        help='most queued requests run in one model call')
    parser.add_argument('--max-request-bytes', type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    parser.add_argument('--batch-window-ms', type=float, default=DEFAULT_BATCH_WINDOW_MS,
                        help='longest wait for the requests of the other clients before a '
                             'partial batch runs (only while several clients are connected)')
    parser.add_argument('--torch-threads', type=int, default=None, help='torch intra-op threads')


def main_from_args(args: argparse.Namespace) -> int:
    """Load the policy, warm it up and serve until SIGINT/SIGTERM; return the exit status."""
    logging.basicConfig(level=logging.INFO, format='[%(levelname)s] %(name)s: %(message)s')
    log = logging.getLogger('pi0_policy.serve')
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    try:
        config = ServerConfig(host=args.host, port=args.port,
                              api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                              max_batch=args.max_batch, max_request_bytes=args.max_request_bytes,
                              batch_window_ms=args.batch_window_ms)
        policy = Pi0Policy.from_checkpoint(
            args.checkpoint, args.robot, device=args.device, dtype=args.dtype,
            num_steps=args.num_steps, asset_id=args.asset_id, tokenizer_path=args.tokenizer,
            seed=args.seed, action_mode=args.action_mode)
        server = PolicyServer(policy, serving_for(policy.adapter.name, args.openpi_format),
                              config)
    except (ValueError, OSError, RuntimeError) as error:
        log.error('Cannot serve: %s', error)
        return EXIT_BAD_CONFIG
    policy.warmup()
    run(server)
    policy.close()
    return EXIT_OK
