"""
Command line ``pi0-policy``: ``parity``, ``benchmark``, ``train``, ``bag2dataset`` and ``serve``.

``parity FIXTURE_DIR [...]`` checks this implementation against "pi0-parity-fixture v1"
directories (weights, inputs and a peer's outputs): camera 0's image tokens, the velocity at
t = 1, the actions with the fixture's exact time grid and the per-element training loss, each
against the fixture's tolerance; where the fixture has ``grads.safetensors``, also the mean loss
and the gradient of every parameter (per tensor: ``|g - g_ref| <= grad_rel |g_ref| + grad_abs``,
L2 norms). Exit status: 0 all pass, 1 a mismatch, 2 an unreadable or unknown fixture.
``train`` fine-tunes or trains π0 on LeRobot datasets (``pi0_policy.training.train``);
``bag2dataset`` converts rosbag2 recordings into one (``pi0_policy.data.rosbag``);
``serve`` serves a policy over openpi's websocket protocol (``pi0_policy.serving.command``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import dataclasses
import math
import pathlib
import sys
from typing import Any

from pi0_policy.model.checkpoint import (
    EMBED_KEY, LAYOUT_LEROBOT, LEROBOT_PREFIX, load_pi0, openpi_key, PREFIX_MAP)
from pi0_policy.model.config import read_fixture_json
from pi0_policy.model.pi0 import TIME_GRID_RULES
from safetensors.torch import load_file
import torch

IO_FILE = 'io.safetensors'
GRADS_FILE = 'grads.safetensors'
EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_BAD_FIXTURE = 2
# Output name -> key of its tolerance in config.json["tolerances"].
TOLERANCE_KEYS = {'image_tokens_0': 'image_tokens_abs', 'velocity_t1': 'velocity_abs',
                  'actions': 'actions_abs', 'train_losses': 'loss_abs'}
# Gradient checks: name, per-tensor rule (worst ``error / bound`` must stay <= 1).
GRADS_CHECK = 'grads'
LOSS_MEAN_CHECK = 'loss_mean'
GRAD_RATIO_LIMIT = 1.0
# The fixture's float32 t values are compared exactly (they are exact float32 decimals).
TIME_GRID_ATOL = 0.0


@dataclasses.dataclass(frozen=True)
class ParityCheck:
    """One compared quantity."""

    # Output name (as in io.safetensors) or 'time_grid'.
    name: str
    # Max abs difference to the reference.
    max_abs_diff: float
    # Allowed max abs difference.
    tolerance: float

    # What max_abs_diff measures (the gradient check reports its worst error / bound ratio).
    metric: str = 'max_abs_diff'

    @property
    def passed(self) -> bool:
        """Return whether the difference is within tolerance (NaN fails)."""
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """All checks of one fixture."""

    # The fixture directory.
    fixture: pathlib.Path
    # Weight layout detected.
    layout: str
    # Results in a fixed order.
    checks: tuple[ParityCheck, ...]

    @property
    def passed(self) -> bool:
        """Return whether every check passed."""
        return all(c.passed for c in self.checks)


def read_fixture_config(fixture: pathlib.Path) -> dict[str, Any]:
    """
    Read and validate a fixture's config.json.

    Args:
        fixture: The fixture directory.

    Returns:
        The parsed config.

    Raises:
        ValueError: If it is unreadable or not a "pi0-parity-fixture v1" fixture.
    """
    data = read_fixture_json(fixture)
    missing = [k for k in ('tolerances', 'time_grid', 'num_steps', 'num_cameras') if k not in data]
    if missing:
        raise ValueError(f'{fixture}/config.json lacks required fields {missing}.')
    return data


def run_parity(fixture: str | pathlib.Path) -> ParityReport:
    """
    Reproduce a fixture's reference outputs in float32 on the CPU.

    Args:
        fixture: A "pi0-parity-fixture v1" directory.

    Returns:
        The report (time grid rule check included).

    Raises:
        ValueError: If the fixture is unreadable, of an unknown format or inconsistent.
    """
    fixture = pathlib.Path(fixture)
    data = read_fixture_config(fixture)
    model, config, info = load_pi0(fixture, device='cpu', dtype=torch.float32)
    try:
        io = load_file(str(fixture / IO_FILE))
    except (OSError, RuntimeError) as e:
        raise ValueError(f'Cannot read {fixture / IO_FILE}: {e}') from e
    try:
        images = torch.stack([io[f'image_{i}'] for i in range(data['num_cameras'])], 1)
        masks = io['image_mask'].bool()
        tokens, token_masks = io['lang_tokens'], io['lang_mask'].bool()
        state = io['state']
    except KeyError as e:
        raise ValueError(f'{fixture / IO_FILE} lacks tensor {e}.') from e
    num_steps = int(data['num_steps'])
    grid = [float(t) for t in data['time_grid']['t_values']]
    rule = data['time_grid'].get('rule')
    if rule not in TIME_GRID_RULES:
        raise ValueError(f'{fixture}: unknown time_grid rule {rule!r}, expected one of '
                         f'{sorted(TIME_GRID_RULES)}.')
    expected_grid = TIME_GRID_RULES[rule](num_steps)
    grid_diff = (max(abs(a - b) for a, b in zip(grid, expected_grid))
                 if len(grid) == len(expected_grid) else math.inf)
    with torch.inference_mode():
        outputs = {
            'image_tokens_0': model.embed_images(images[:, :1])[:, 0].float(),
            'velocity_t1': model.velocity(images, masks, tokens, token_masks, state,
                                          io['noise'], torch.ones(images.shape[0])),
            'actions': model.sample_actions(images, masks, tokens, token_masks, state,
                                            noise=io['noise'], num_steps=num_steps,
                                            time_grid=grid),
            'train_losses': model.compute_loss(images, masks, tokens, token_masks, state,
                                               io['train_actions'], noise=io['train_noise'],
                                               time=io['train_time']),
        }
    checks = []
    for name, tol_key in TOLERANCE_KEYS.items():
        ref = io[name]
        got = outputs[name]
        diff = ((got - ref).abs().max().item() if got.shape == ref.shape else math.inf)
        checks.append(ParityCheck(name, diff, float(data['tolerances'][tol_key])))
    checks.append(ParityCheck('time_grid', grid_diff, TIME_GRID_ATOL))
    return ParityReport(fixture=fixture, layout=info.layout, checks=tuple(checks))


def fixture_key(name: str, layout: str) -> str:
    """Return the key of parameter ``name`` in a fixture's files (as ``save_pi0`` writes it)."""
    key = openpi_key(name)
    if layout != LAYOUT_LEROBOT:
        return key
    if name == EMBED_KEY:  # the lerobot layout keeps the token embedding under its own name
        key = PREFIX_MAP[2][0] + name[len(PREFIX_MAP[2][1]):]
    return LEROBOT_PREFIX + key


def run_grad_parity(fixture: str | pathlib.Path) -> tuple[ParityCheck, ...]:
    """
    Check the mean training loss and its gradient wrt every parameter against the fixture.

    Args:
        fixture: A fixture directory holding ``grads.safetensors``.

    Returns:
        The 'loss_mean' check (absolute) and the 'grads' check (worst per-tensor ratio of
        ``|g - g_ref|`` to ``grad_rel |g_ref| + grad_abs``, which must be <= 1).

    Raises:
        ValueError: If the fixture lacks the gradient file, tolerances or tensors.
    """
    fixture = pathlib.Path(fixture)
    data = read_fixture_config(fixture)
    tol = data['tolerances']
    missing = [k for k in ('loss_mean_abs', 'grad_rel', 'grad_abs') if k not in tol]
    if missing:
        raise ValueError(f'{fixture}/config.json tolerances lack {missing} for the gradients.')
    model, _, info = load_pi0(fixture, device='cpu', dtype=torch.float32)
    try:
        io = load_file(str(fixture / IO_FILE))
        ref = load_file(str(fixture / GRADS_FILE))
        images = torch.stack([io[f'image_{i}'] for i in range(data['num_cameras'])], 1)
        model.requires_grad_(True)
        loss = model.compute_loss(images, io['image_mask'].bool(), io['lang_tokens'],
                                  io['lang_mask'].bool(), io['state'], io['train_actions'],
                                  noise=io['train_noise'], time=io['train_time']).mean()
        loss_ref = float(io['loss_mean'])
    except (OSError, RuntimeError) as e:
        raise ValueError(f'Cannot read {fixture} gradients: {e}') from e
    except KeyError as e:
        raise ValueError(f'{fixture / IO_FILE} lacks tensor {e}.') from e
    loss.backward()
    grads = {fixture_key(n, info.layout): p.grad for n, p in model.named_parameters()}
    unknown = sorted(set(ref) - set(grads))
    if unknown:
        raise ValueError(f'{fixture / GRADS_FILE} has gradients of unknown parameters '
                         f'{unknown[:3]}; expected keys of {fixture / "model.safetensors"}.')
    worst = 0.0
    for key, want in ref.items():
        got = grads[key] if grads[key] is not None else torch.zeros_like(want)  # no grad = 0
        if got.shape != want.shape:
            worst = math.inf
            break
        bound = float(tol['grad_rel']) * want.norm().item() + float(tol['grad_abs'])
        worst = max(worst, (got - want).norm().item() / bound)
    return (ParityCheck(LOSS_MEAN_CHECK, abs(loss.item() - loss_ref), float(tol['loss_mean_abs'])),
            ParityCheck(GRADS_CHECK, worst, GRAD_RATIO_LIMIT, metric='err/bound'))


def parity_main(fixtures: Sequence[str]) -> int:
    """Run and print the parity checks of every fixture; return the exit status."""
    status = EXIT_OK
    for fixture in fixtures:
        print(f'== {fixture}')
        try:
            report = run_parity(fixture)
            checks = report.checks
            if (pathlib.Path(fixture) / GRADS_FILE).is_file():
                checks += run_grad_parity(fixture)
        except ValueError as e:
            print(f'ERROR: {e}')
            status = max(status, EXIT_BAD_FIXTURE)
            continue
        print(f'   layout: {report.layout}')
        for c in checks:
            verdict = 'PASS' if c.passed else 'FAIL'
            print(f'   {c.name:<16} {c.metric}={c.max_abs_diff:.3e}  '
                  f'tol={c.tolerance:.1e}  {verdict}')
        passed = all(c.passed for c in checks)
        print(f'   => {"PASS" if passed else "FAIL"}')
        if not passed:
            status = max(status, EXIT_MISMATCH)
    return status


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``pi0-policy``."""
    from pi0_policy import benchmark
    parser = argparse.ArgumentParser(prog='pi0-policy', description=__doc__.split('\n')[1])
    sub = parser.add_subparsers(dest='command', required=True)
    par = sub.add_parser('parity', help='check against parity fixtures')
    par.add_argument('fixtures', nargs='+', metavar='FIXTURE_DIR')
    benchmark.add_arguments(sub.add_parser('benchmark', help='latency and memory benchmark'))
    from pi0_policy.data import rosbag
    from pi0_policy.training import train
    train.add_arguments(sub.add_parser('train', help='fine-tune or train pi0 on LeRobot datasets'))
    rosbag.add_arguments(sub.add_parser('bag2dataset',
                                        help='convert rosbag2 recordings to a LeRobot dataset'))
    from pi0_policy.serving import command as serve_command
    serve_command.add_arguments(sub.add_parser(
        'serve', help="serve a policy over openpi's websocket protocol"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the command line.

    Args:
        argv: Arguments without the program name (default: sys.argv[1:]).

    Returns:
        The exit status.
    """
    args = build_parser().parse_args(argv)
    if args.command == 'parity':
        return parity_main(args.fixtures)
    if args.command == 'train':
        from pi0_policy.training import train
        return train.main_from_args(args)
    if args.command == 'bag2dataset':
        from pi0_policy.data import rosbag
        return rosbag.main_from_args(args)
    if args.command == 'serve':
        from pi0_policy.serving import command as serve_command
        return serve_command.main_from_args(args)
    from pi0_policy import benchmark
    return benchmark.main_from_args(args)


if __name__ == '__main__':
    sys.exit(main())
