"""
Latency and memory benchmark of π0 (``pi0-policy benchmark``).

Builds the tiny or the full architecture with random weights (or loads ``--checkpoint``), then
times the inference engine (``pi0_policy.engine``) after ``--warmup`` untimed calls, the median
over ``--repeats`` of: vision + prefix embeddings, the prefix forward (KV cache), one denoising
step (from a prepared per-observation context, as inside ``sample_actions``; the median of
``STEP_CALLS`` calls), a whole ``sample_actions`` call and, with ``--rtc``, a whole RTC-guided
``sample_actions`` call (one backward pass through the action expert per step). Every stage is
printed (and flushed) as soon as it is measured, so a slow machine still reports partial numbers.

``--floor`` also times the bare matrix products of each stage's linear layers (``torch.mm`` of
the same shapes, in the compute dtype, on fresh weights: no attention, norms or activations) and
prints each stage's efficiency (floor / measured): the compute floor of this machine, which bounds
any implementation of the same model on it, so stages compare across CPUs and implementations.

Defaults depend on the size: tiny runs 1 warm-up and 20 repeats; full runs no warm-up and 1 repeat
(one full-size ``sample_actions`` takes seconds to minutes on a CPU). The full model is filled with
``init_random(tiled=True)`` (fast, benchmark-only weights; see its docstring).

Memory: on the CPU the process's peak RSS (``resource``) and the resident set after loading (after
returning the construction's freed heap to the OS); on a GPU ``torch.cuda.max_memory_allocated``.
The header prints the CPU capability and the compute policy (storage vs compute dtype; see
``pi0_policy.engine.compute``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
import ctypes
import ctypes.util
import dataclasses
import functools
import os
import resource
import statistics
import sys
import time
from typing import TextIO

from pi0_policy.engine.compute import (
    COMPUTE_POLICIES, describe_compute, POLICY_AUTO, resolve_compute_dtype)
from pi0_policy.engine.engine import Pi0Engine
from pi0_policy.model.checkpoint import load_pi0
from pi0_policy.model.config import GemmaConfig, Pi0Config
from pi0_policy.model.pi0 import build_empty, init_random
from pi0_policy.model.rtc import ChunkPrior
import torch

ARCHS = {'tiny': Pi0Config.tiny, 'full': Pi0Config.full}
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16}
# Per-architecture defaults of (warm-up calls, timed repeats).
DEFAULT_WARMUP = {'tiny': 1, 'full': 0}
DEFAULT_REPEATS = {'tiny': 20, 'full': 1}
# Architectures initialised with the fast tiled fill (benchmark-only weights).
TILED_INIT_ARCHS = frozenset({'full'})
DEFAULT_STEPS = 10
# Valid prompt tokens in the synthetic observation (the rest is padding), as in the peer figures.
PROMPT_TOKENS = 8
BYTES_PER_KIB = 1024
BYTES_PER_GB = 1e9
MS_PER_S = 1e3
STATM_PATH = '/proc/self/statm'
LIBC_NAME = 'c'
STAGES = ('vision', 'prefix', 'step', 'total')
# Denoising steps timed per pass (the median is the pass's step time: the first one is colder).
STEP_CALLS = 3
# Extra stage with --rtc: a guided sample_actions call.
RTC_STAGE = 'rtc_total'
# RTC benchmark setting: delay d and execution horizon s as fractions of the horizon H.
RTC_DELAY_FRACTION = 0.2
RTC_EXECUTE_FRACTION = 0.5
# --floor: weight copies per shape span at least this many bytes, so that the products stream
# their weights from memory as a real forward does (one copy could stay in the CPU's cache).
FLOOR_MIN_WEIGHT_BYTES = 64 << 20
FLOOR_REPEATS = 3
# Stages whose products --floor times (the step: the suffix through the action expert).
FLOOR_STAGES = ('vision', 'prefix', 'step')


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
    # Resident memory right after loading (CPU RSS or CUDA allocated).
    loaded_bytes: int = 0
    # Storage/compute dtype and CPU capability line.
    compute: str = ''
    # Median time of one RTC-guided sample_actions call (0 without --rtc).
    rtc_total_s: float = 0.0
    # --floor: per stage of FLOOR_STAGES, seconds of its bare linear-layer products.
    floor_s: dict[str, float] = dataclasses.field(default_factory=dict)


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


def current_memory_bytes(device: torch.device) -> int:
    """Return the memory in use now: CUDA allocated on a GPU, else this process's RSS."""
    if device.type == 'cuda':
        return torch.cuda.memory_allocated(device)
    try:
        with open(STATM_PATH) as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf('SC_PAGE_SIZE')


def release_free_memory() -> bool:
    """
    Return freed heap memory to the OS (glibc ``malloc_trim``), e.g. the construction buffers.

    Returns:
        Whether it ran (False without glibc).
    """
    path = ctypes.util.find_library(LIBC_NAME)
    try:
        trim = ctypes.CDLL(path).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim(0)
    return True


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


def _gemma_linears(cfg: GemmaConfig) -> list[tuple[int, int]]:
    """Return the (out, in) weight shapes of one Gemma layer (fused q/k/v and gate/up)."""
    return [((cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim, cfg.width),
            (cfg.width, cfg.num_heads * cfg.head_dim), (2 * cfg.mlp_dim, cfg.width),
            (cfg.width, cfg.mlp_dim)]


def stage_linears(config: Pi0Config, cameras: int) -> dict[str, tuple[int, list, int]]:
    """
    Return the linear layers of each stage of FLOOR_STAGES.

    Returns:
        Per stage: (rows M of its products, the (out, in) weight shapes of one layer, layers).
    """
    v = config.vision
    image_tokens = cameras * (v.image_size // v.patch_size) ** 2
    vision = [(3 * v.width, v.width), (v.width, v.width), (v.mlp_dim, v.width),
              (v.width, v.mlp_dim)]
    return {'vision': (image_tokens, vision, v.depth),
            'prefix': (image_tokens + config.max_token_len, _gemma_linears(config.vlm),
                       config.vlm.depth),
            'step': (1 + config.action_horizon, _gemma_linears(config.expert),
                     config.expert.depth)}


def matmul_floor(config: Pi0Config, cameras: int, dtype: torch.dtype,
                 device: torch.device) -> dict[str, float]:
    """
    Time the bare products of each stage's linear layers (see ``--floor``), seconds per stage.

    Each shape is timed (median of FLOOR_REPEATS, after one untimed product) over enough weight
    copies to span FLOOR_MIN_WEIGHT_BYTES, then counted once per layer.
    """
    out = {}
    for stage, (rows, shapes, depth) in stage_linears(config, cameras).items():
        total = 0.0
        for n, k in shapes:
            size = n * k * torch.finfo(dtype).bits // 8
            copies = max(1, min(depth, -(-FLOOR_MIN_WEIGHT_BYTES // size)))
            weights = [torch.randn(n, k, device=device).to(dtype) for _ in range(copies)]
            x = torch.randn(rows, k, device=device).to(dtype)

            def products(weights=weights, x=x) -> None:
                for w in weights:
                    torch.mm(x, w.t())
            products()
            seconds = [_timed(products, device)[0] for _ in range(FLOOR_REPEATS)]
            total += statistics.median(seconds) / copies * depth
        out[stage] = total
    return out


def run_benchmark(arch: str = 'tiny', cameras: int = 1, dtype: str = 'bfloat16',
                  device: str = 'cpu', steps: int = DEFAULT_STEPS, repeats: int | None = None,
                  checkpoint: str | None = None, compile_step: bool = False, *,
                  warmup: int | None = None, policy: str = POLICY_AUTO, rtc: bool = False,
                  floor: bool = False, log: TextIO | None = None) -> BenchmarkResult:
    """
    Build or load the model and measure it.

    Args:
        arch: 'tiny' or 'full' (ignored with a checkpoint).
        cameras: Number of (valid) cameras.
        dtype: Storage dtype, 'float32' or 'bfloat16'.
        device: torch device string.
        steps: Denoising steps per sample_actions.
        repeats: Timed repetitions (default per arch: ``DEFAULT_REPEATS``).
        checkpoint: Optional checkpoint directory instead of random weights.
        compile_step: Compile the denoising step with torch.compile.
        warmup: Untimed passes first (default per arch: ``DEFAULT_WARMUP``).
        policy: Compute policy ('auto', 'storage', 'float32').
        rtc: Also time an RTC-guided sample_actions call.
        floor: Also time the bare linear-layer products of each stage (``matmul_floor``).
        log: Stream for progress lines as each stage finishes (None: silent).

    Returns:
        The measurements.

    Raises:
        ValueError: On an unknown arch, dtype or policy or a bad count.
    """
    if arch not in ARCHS or dtype not in DTYPES or policy not in COMPUTE_POLICIES:
        raise ValueError(
            f'arch must be one of {sorted(ARCHS)}, dtype one of {sorted(DTYPES)} and policy one '
            f'of {COMPUTE_POLICIES}, got arch={arch!r}, dtype={dtype!r}, policy={policy!r}.')
    repeats = DEFAULT_REPEATS[arch] if repeats is None else repeats
    warmup = DEFAULT_WARMUP[arch] if warmup is None else warmup
    if min(cameras, steps, repeats) <= 0 or warmup < 0:
        raise ValueError(f'cameras, steps and repeats must be positive and warmup >= 0, got '
                         f'{cameras}, {steps}, {repeats}, {warmup}.')

    def say(line: str) -> None:
        if log is not None:
            print(line, file=log, flush=True)

    dev = torch.device(device)
    say(f'  compute               {describe_compute(DTYPES[dtype], dev, policy)}')
    if checkpoint:
        load_s, (model, config, _) = _timed(
            lambda: load_pi0(checkpoint, device=dev, dtype=DTYPES[dtype]), dev)
        init = 'checkpoint'
    else:
        config = ARCHS[arch](num_cameras=cameras)
        tiled = arch in TILED_INIT_ARCHS
        init = 'random (tiled, benchmark-only)' if tiled else 'random'
        load_s, model = _timed(lambda: init_random(
            build_empty(config, device=dev, dtype=DTYPES[dtype]), tiled=tiled), dev)
    engine = Pi0Engine(model, policy=policy, compile=compile_step)
    engine.prepare()
    release_free_memory()
    loaded = current_memory_bytes(dev)
    num_params = sum(p.numel() for p in model.parameters())
    say(f'  parameters            {num_params / 1e9:.3f} B ({init})')
    say(f'  construction + load   {load_s:.2f} s')
    say(f'  resident after load   {loaded / BYTES_PER_GB:.2f} GB')
    inputs = make_inputs(config, cameras, dev)
    stages = STAGES + ((RTC_STAGE,) if rtc else ())
    times: dict[str, list[float]] = {k: [] for k in stages}
    with torch.inference_mode():
        for rep in range(warmup + repeats):
            record = rep >= warmup
            tag = f'[{"run " + str(rep - warmup + 1) if record else "warm-up"}]'
            for name, seconds in _one_pass(engine, inputs, steps, dev, rtc):
                times[name] += [seconds] * record
                say(f'  {tag:<9} {name:<11} {seconds * MS_PER_S:.1f} ms')
    med = {k: statistics.median(v) for k, v in times.items()}
    floor_s = {}
    if floor:
        del engine, model  # the floor's weights take the model's place in memory
        release_free_memory()
        floor_s = matmul_floor(config, cameras, resolve_compute_dtype(DTYPES[dtype], dev, policy),
                               dev)
        for stage, seconds in floor_s.items():
            say(f'  [floor]   {stage:<11} {seconds * MS_PER_S:.1f} ms')
    return BenchmarkResult(load_s=load_s, vision_s=med['vision'], prefix_s=med['prefix'],
                           step_s=med['step'], total_s=med['total'],
                           peak_bytes=peak_memory_bytes(dev), num_params=num_params,
                           loaded_bytes=loaded,
                           compute=describe_compute(DTYPES[dtype], dev, policy),
                           rtc_total_s=med.get(RTC_STAGE, 0.0), floor_s=floor_s)


def _one_pass(engine: Pi0Engine, inputs: dict[str, torch.Tensor], steps: int,
              dev: torch.device, rtc: bool) -> Iterator[tuple[str, float]]:
    """Yield (stage, seconds) for vision, prefix, one step, sample_actions (and RTC)."""
    images, masks = inputs['images'], inputs['image_masks']
    tokens, token_masks = inputs['tokens'], inputs['token_masks']
    t, prefix = _timed(functools.partial(engine.embed_prefix, images, masks, tokens,
                                         token_masks), dev)
    yield 'vision', t
    t, cache = _timed(functools.partial(engine.run_prefix, *prefix), dev)
    yield 'prefix', t
    ctx = engine.prepare_denoise(cache, inputs['state'])
    del prefix, cache  # drop this pass's activations before the next measurements
    time_emb = engine.time_embeddings(torch.ones(1, device=dev))
    step = functools.partial(engine._step, ctx, inputs['noise'], time_emb)
    t = statistics.median(_timed(step, dev)[0] for _ in range(STEP_CALLS))
    del ctx
    yield 'step', t
    sample = functools.partial(engine.sample_actions, images, masks, tokens, token_masks,
                               inputs['state'], noise=inputs['noise'], num_steps=steps)
    t, chunk = _timed(sample, dev)
    yield 'total', t
    if rtc:
        horizon = engine.config.action_horizon
        execute = int(RTC_EXECUTE_FRACTION * horizon)
        prior = ChunkPrior.from_leftover(chunk[:, execute:],
                                         delay=int(RTC_DELAY_FRACTION * horizon),
                                         horizon=horizon)
        t, _ = _timed(functools.partial(sample, prior=prior), dev)
        yield RTC_STAGE, t


def format_result(result: BenchmarkResult, args: argparse.Namespace) -> str:
    """Return a human-readable report."""
    return '\n'.join([
        f'pi0 benchmark summary: arch={args.arch} cameras={args.cameras} dtype={args.dtype} '
        f'device={args.device} steps={args.steps} repeats={args.repeats} '
        f'threads={torch.get_num_threads()}',
        f'  compute               {result.compute}',
        f'  parameters            {result.num_params / 1e9:.3f} B',
        f'  construction + load   {result.load_s:.2f} s',
        f'  vision + embeddings   {result.vision_s * MS_PER_S:.1f} ms',
        f'  prefix forward        {result.prefix_s * MS_PER_S:.1f} ms',
        f'  one denoising step    {result.step_s * MS_PER_S:.1f} ms',
        f'  sample_actions total  {result.total_s * MS_PER_S:.1f} ms',
        *([f'  RTC-guided total      {result.rtc_total_s * MS_PER_S:.1f} ms '
           f'({result.rtc_total_s / result.total_s:.2f}x)'] if result.rtc_total_s else []),
        f'  resident after load   {result.loaded_bytes / BYTES_PER_GB:.2f} GB',
        f'  peak memory           {result.peak_bytes / BYTES_PER_GB:.2f} GB',
        *_format_floor(result, args.steps),
    ])


def _format_floor(result: BenchmarkResult, steps: int) -> list[str]:
    """Return the --floor lines: each stage's product floor and efficiency (floor / measured)."""
    if not result.floor_s:
        return []
    measured = {'vision': result.vision_s, 'prefix': result.prefix_s, 'step': result.step_s}
    floor = result.floor_s
    total = floor['vision'] + floor['prefix'] + steps * floor['step']
    lines = [f'  matmul floor {stage:<8} {floor[stage] * MS_PER_S:.1f} ms '
             f'(efficiency {floor[stage] / measured[stage]:.0%})' for stage in FLOOR_STAGES]
    return lines + [f'  matmul floor total    {total * MS_PER_S:.1f} ms (vision + prefix + '
                    f'{steps} steps; sample_actions efficiency {total / result.total_s:.0%})']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark options to ``parser``."""
    parser.add_argument('--arch', choices=sorted(ARCHS), default='tiny')
    parser.add_argument('--cameras', type=int, default=1)
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='bfloat16',
                        help='storage dtype of the transformer weights')
    parser.add_argument('--policy', choices=COMPUTE_POLICIES, default=POLICY_AUTO,
                        help='compute policy for bfloat16 storage (auto: float32 matmuls on '
                             'CPUs without native bfloat16)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--steps', type=int, default=DEFAULT_STEPS)
    parser.add_argument('--repeats', type=int, default=None,
                        help=f'timed repeats (default {DEFAULT_REPEATS})')
    parser.add_argument('--warmup', type=int, default=None,
                        help=f'untimed warm-up passes (default {DEFAULT_WARMUP})')
    parser.add_argument('--checkpoint', default=None, help='checkpoint dir instead of random')
    parser.add_argument('--compile', action='store_true', help='torch.compile the step')
    parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads')
    parser.add_argument('--rtc', action='store_true',
                        help='also time RTC-guided sampling (one backward pass per step)')
    parser.add_argument('--floor', action='store_true',
                        help="also time the bare matmuls of each stage's linear layers (this "
                             "machine's compute floor)")


def main_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments, printing stages as they finish; return 0."""
    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats = DEFAULT_REPEATS[args.arch] if args.repeats is None else args.repeats
    print(f'pi0 benchmark: arch={args.arch} cameras={args.cameras} dtype={args.dtype} '
          f'device={args.device} steps={args.steps} threads={torch.get_num_threads()}',
          flush=True)
    result = run_benchmark(args.arch, args.cameras, args.dtype, args.device, args.steps,
                           args.repeats, args.checkpoint, args.compile, warmup=args.warmup,
                           policy=args.policy, rtc=args.rtc, floor=args.floor,
                           log=sys.stdout)
    print(format_result(result, args), flush=True)
    return 0
