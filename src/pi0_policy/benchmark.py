"""
Latency and memory benchmark of π0 (``pi0-policy benchmark``).

Builds the tiny or the full architecture with random weights (or loads ``--checkpoint``), then
times, after one warm-up call, the median over ``--repeats`` of: vision + prefix embeddings, the
prefix forward (KV cache), one denoising step, and a whole ``sample_actions`` call. Peak memory is
the process's peak RSS on the CPU (``resource``) or ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import dataclasses
import resource
import statistics
import time

from pi0_policy.model.checkpoint import load_pi0
from pi0_policy.model.config import Pi0Config
from pi0_policy.model.pi0 import build_empty, init_random, Pi0Model
import torch

ARCHS = {'tiny': Pi0Config.tiny, 'full': Pi0Config.full}
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16}
# Valid prompt tokens in the synthetic observation (the rest is padding), as in the peer figures.
PROMPT_TOKENS = 8
BYTES_PER_KIB = 1024
BYTES_PER_GB = 1e9
MS_PER_S = 1e3


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """Measured numbers (seconds, bytes)."""

    # Construction + random init, or checkpoint load.
    load_s: float
    # Median vision + prefix embedding time.
    vision_s: float
    # Median prefix forward (KV cache) time.
    prefix_s: float
    # Median time of one denoising step.
    step_s: float
    # Median time of one sample_actions call.
    total_s: float
    # Peak resident memory (CPU RSS or CUDA allocated).
    peak_bytes: int
    # Number of parameters.
    num_params: int


def _sync(device: torch.device) -> None:
    """Wait for queued device work."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Run ``fn`` and return (seconds, result)."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def peak_memory_bytes(device: torch.device) -> int:
    """Return the peak memory: CUDA allocated on a GPU, else this process's peak RSS."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device)
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * BYTES_PER_KIB


def make_inputs(config: Pi0Config, cameras: int, device: torch.device,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """Build one synthetic observation (B = 1) with ``cameras`` valid cameras."""
    gen = torch.Generator().manual_seed(seed)
    size = config.vision.image_size
    tokens = torch.zeros(1, config.max_token_len, dtype=torch.int64)
    tokens[0, :PROMPT_TOKENS] = torch.randint(0, config.vlm.vocab_size, (PROMPT_TOKENS,),
                                              generator=gen)
    inputs = {
        'images': torch.rand(1, cameras, 3, size, size, generator=gen) * 2 - 1,
        'image_masks': torch.ones(1, cameras, dtype=torch.bool),
        'tokens': tokens,
        'token_masks': torch.arange(config.max_token_len)[None] < PROMPT_TOKENS,
        'state': torch.randn(1, config.state_dim, generator=gen),
        'noise': torch.randn(1, config.action_horizon, config.action_dim, generator=gen),
    }
    return {k: v.to(device) for k, v in inputs.items()}


def run_benchmark(arch: str = 'tiny', cameras: int = 1, dtype: str = 'bfloat16',
                  device: str = 'cpu', steps: int = 10, repeats: int = 5,
                  checkpoint: str | None = None,
                  compile_step: bool = False) -> BenchmarkResult:
    """
    Build or load the model and measure it.

    Args:
        arch: 'tiny' or 'full' (ignored with a checkpoint).
        cameras: Number of (valid) cameras.
        dtype: 'float32' or 'bfloat16'.
        device: torch device string.
        steps: Denoising steps per sample_actions.
        repeats: Timed repetitions after one warm-up.
        checkpoint: Optional checkpoint directory instead of random weights.
        compile_step: Compile the denoising step with torch.compile.

    Returns:
        The measurements.

    Raises:
        ValueError: On an unknown arch or dtype or a non-positive count.
    """
    if arch not in ARCHS or dtype not in DTYPES:
        raise ValueError(f'arch must be one of {sorted(ARCHS)} and dtype one of {sorted(DTYPES)}'
                         f', got arch={arch!r}, dtype={dtype!r}.')
    if min(cameras, steps, repeats) <= 0:
        raise ValueError(f'cameras, steps and repeats must be positive, got {cameras}, {steps}, '
                         f'{repeats}.')
    dev = torch.device(device)
    if checkpoint:
        load_s, (model, config, _) = _timed(
            lambda: load_pi0(checkpoint, device=dev, dtype=DTYPES[dtype]), dev)
    else:
        config = ARCHS[arch](num_cameras=cameras)
        load_s, model = _timed(
            lambda: init_random(build_empty(config, device=dev, dtype=DTYPES[dtype])), dev)
    inputs = make_inputs(config, cameras, dev)
    times: dict[str, list[float]] = {'vision': [], 'prefix': [], 'step': [], 'total': []}
    with torch.inference_mode():
        for rep in range(repeats + 1):
            record = rep > 0  # the first pass is the warm-up
            t, prefix = _timed(lambda: model.embed_prefix(
                inputs['images'], inputs['image_masks'], inputs['tokens'],
                inputs['token_masks']), dev)
            times['vision'] += [t] * record
            t, cache = _timed(lambda: model.run_prefix(*prefix), dev)
            times['prefix'] += [t] * record
            time_t = torch.ones(1, device=dev)
            t, _ = _timed(lambda: _step(model, cache, inputs, time_t, compile_step), dev)
            times['step'] += [t] * record
            t, _ = _timed(lambda: model.sample_actions(
                inputs['images'], inputs['image_masks'], inputs['tokens'],
                inputs['token_masks'], inputs['state'], noise=inputs['noise'], num_steps=steps,
                compile=compile_step), dev)
            times['total'] += [t] * record
    med = {k: statistics.median(v) for k, v in times.items()}
    return BenchmarkResult(load_s=load_s, vision_s=med['vision'], prefix_s=med['prefix'],
                           step_s=med['step'], total_s=med['total'],
                           peak_bytes=peak_memory_bytes(dev),
                           num_params=sum(p.numel() for p in model.parameters()))


def _step(model: Pi0Model, cache: object, inputs: dict[str, torch.Tensor], t: torch.Tensor,
          compile_step: bool) -> torch.Tensor:
    """Run one denoising step (compiled if requested)."""
    step = model._step_fn(compile_step)
    return step(cache, inputs['state'], inputs['noise'], t)


def format_result(result: BenchmarkResult, args: argparse.Namespace) -> str:
    """Return a human-readable report."""
    return '\n'.join([
        f'pi0 benchmark: arch={args.arch} cameras={args.cameras} dtype={args.dtype} '
        f'device={args.device} steps={args.steps} repeats={args.repeats} '
        f'threads={torch.get_num_threads()}',
        f'  parameters            {result.num_params / 1e9:.3f} B',
        f'  construction + load   {result.load_s:.2f} s',
        f'  vision + embeddings   {result.vision_s * MS_PER_S:.1f} ms',
        f'  prefix forward        {result.prefix_s * MS_PER_S:.1f} ms',
        f'  one denoising step    {result.step_s * MS_PER_S:.1f} ms',
        f'  sample_actions total  {result.total_s * MS_PER_S:.1f} ms',
        f'  peak memory           {result.peak_bytes / BYTES_PER_GB:.2f} GB',
    ])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark options to ``parser``."""
    parser.add_argument('--arch', choices=sorted(ARCHS), default='tiny')
    parser.add_argument('--cameras', type=int, default=1)
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='bfloat16')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--checkpoint', default=None, help='checkpoint dir instead of random')
    parser.add_argument('--compile', action='store_true', help='torch.compile the step')
    parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads')


def main_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments and print the report; return 0."""
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_benchmark(args.arch, args.cameras, args.dtype, args.device, args.steps,
                           args.repeats, args.checkpoint, args.compile)
    print(format_result(result, args))
    return 0
