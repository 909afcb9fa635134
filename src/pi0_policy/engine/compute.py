"""
Compute policy of the engine (the dtype the matmuls run in) and its fused-weight helpers.

Storage vs compute dtype: ``Pi0Model.set_dtype(torch.bfloat16)`` stores the transformer weights in
bfloat16 (half the memory). Whether the matmuls also *run* in bfloat16 is the compute policy:

- ``'auto'`` (default): bfloat16 on CUDA and on CPUs with native bfloat16 arithmetic (x86 AMX-BF16
  or AVX512-BF16, aarch64 BF16); float32 on other CPUs, where PyTorch emulates bfloat16 matmuls
  several times slower than float32 (AVX2-only x86, for example).
- ``'storage'``: always compute in the storage dtype.
- ``'float32'``: always compute in float32.

With a float32 compute dtype and bfloat16 storage, activations are float32 and every matmul
upcasts its weight for the duration of the call (``linear``), in row chunks of at most
``MAX_UPCAST_ELEMENTS`` copied into one reused per-thread float32 buffer (without autograd), so
the transient memory stays a few MB and the allocator is not churned; weights stay resident in
bfloat16.

Fused weights: the engine stores the q/k/v projections of an attention layer and the gate/up
projections of a Gemma MLP as row blocks of one tensor (``fuse_rows``), so inference runs one
matmul instead of two or three. To keep one copy of the weights in memory, the model's parameters
become views of the fused tensor (same values; the model does not know). Anything that replaces
them (``Module.to``, a new dtype, assigning a new Parameter) is detected by ``fuse_rows`` and the
fused tensor is rebuilt on the next use; in-place updates (loading, optimisers) are seen by both.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import pathlib
import threading

from pi0_policy.model import layers
import torch
import torch.nn.functional as F

POLICY_AUTO = 'auto'
POLICY_STORAGE = 'storage'
POLICY_FLOAT32 = 'float32'
COMPUTE_POLICIES = (POLICY_AUTO, POLICY_STORAGE, POLICY_FLOAT32)
# /proc/cpuinfo flags of native bfloat16 arithmetic: x86 AMX-BF16, AVX512-BF16; aarch64 BF16.
NATIVE_BF16_CPU_FLAGS = frozenset({'amx_bf16', 'avx512_bf16', 'bf16'})
CPUINFO_PATH = pathlib.Path('/proc/cpuinfo')
# /proc/cpuinfo line prefixes listing the CPU features (x86, aarch64).
CPUINFO_FLAG_KEYS = ('flags', 'features')
# Largest weight slice upcast at once by ``linear`` (elements; 4 MB of float32).
MAX_UPCAST_ELEMENTS = 1 << 20
# Per-thread reusable upcast buffer of ``linear``.
_UPCAST = threading.local()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Return the CPU feature flags of the first processor in /proc/cpuinfo (empty if unknown)."""
    try:
        text = CPUINFO_PATH.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(':')
        if key.strip().lower() in CPUINFO_FLAG_KEYS:
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Return whether this CPU has native bfloat16 matmul instructions."""
    return bool(cpu_flags() & NATIVE_BF16_CPU_FLAGS)


def cpu_capability() -> str:
    """Return PyTorch's CPU kernel capability (e.g. 'AVX2', 'AVX512')."""
    return str(torch.backends.cpu.get_cpu_capability())


def check_policy(policy: str) -> None:
    """Raise ValueError unless ``policy`` is a known compute policy."""
    if policy not in COMPUTE_POLICIES:
        raise ValueError(
            f'compute policy must be one of {COMPUTE_POLICIES}, got {policy!r}.')


def resolve_compute_dtype(storage: torch.dtype, device: torch.device | str,
                          policy: str = POLICY_AUTO) -> torch.dtype:
    """
    Return the dtype the matmuls run in for weights stored in ``storage`` on ``device``.

    Args:
        storage: The storage dtype of the transformer weights.
        device: Where they live.
        policy: 'auto', 'storage' or 'float32' (see the module docstring).

    Returns:
        The compute dtype.

    Raises:
        ValueError: On an unknown policy.
    """
    check_policy(policy)
    if storage == torch.float32 or policy == POLICY_STORAGE:
        return storage
    if policy == POLICY_FLOAT32:
        return torch.float32
    if torch.device(device).type == 'cpu' and not cpu_has_native_bf16():
        return torch.float32
    return storage


def describe_compute(storage: torch.dtype, device: torch.device | str,
                     policy: str = POLICY_AUTO) -> str:
    """Return a one-line description of the storage/compute dtypes and the CPU capability."""
    compute = resolve_compute_dtype(storage, device, policy)
    native = 'yes' if cpu_has_native_bf16() else 'no'
    return (f'storage={_name(storage)} compute={_name(compute)} policy={policy} '
            f'cpu_capability={cpu_capability()} cpu_native_bf16={native}')


def _name(dtype: torch.dtype) -> str:
    """Return 'float32' for torch.float32."""
    return str(dtype).removeprefix('torch.')


def linear(x: torch.Tensor, weight: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """
    Compute ``model.layers.linear``; without autograd, upcast a weight in reused row chunks.

    The chunks (at most ``MAX_UPCAST_ELEMENTS``) go through one per-thread buffer, so a float32
    matmul of bfloat16 weights never holds a float32 copy of a whole matrix.
    """
    if (weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype)) \
            or torch.is_grad_enabled():
        return layers.linear(x, weight, bias)
    if bias is not None:
        bias = bias.to(x.dtype)
    rows, cols = weight.shape
    chunk = max(1, MAX_UPCAST_ELEMENTS // max(1, cols))
    if rows <= chunk:
        return F.linear(x, _upcast(weight, x.dtype), bias)
    out = torch.empty(*x.shape[:-1], rows, dtype=x.dtype, device=x.device)
    for a in range(0, rows, chunk):
        out[..., a:a + chunk] = F.linear(x, _upcast(weight[a:a + chunk], x.dtype),
                                         None if bias is None else bias[a:a + chunk])
    return out


def _upcast(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Copy ``weight`` into this thread's reusable buffer of ``dtype`` and return that view."""
    buf = getattr(_UPCAST, 'buffer', None)
    n = weight.numel()
    if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != weight.device:
        with torch.inference_mode(False):
            size = max(n, MAX_UPCAST_ELEMENTS)
            buf = torch.empty(size, dtype=dtype, device=weight.device)
        _UPCAST.buffer = buf
    view = buf[:n].view(weight.shape)
    view.copy_(weight)
    return view


def _is_fused(parts: Sequence[torch.Tensor], base: torch.Tensor) -> bool:
    """Return whether ``parts`` are, in order, the contiguous row blocks of ``base``."""
    row_bytes = base[0].numel() * base.element_size() if base.shape[0] else 0
    address, rows = base.data_ptr(), 0
    for p in parts:
        if (p.dtype != base.dtype or p.device != base.device or p.shape[1:] != base.shape[1:]
                or not p.is_contiguous() or p.data_ptr() != address + rows * row_bytes):
            return False
        rows += p.shape[0]
    return rows == base.shape[0]


def fuse_rows(parts: Sequence[torch.Tensor], base: torch.Tensor | None, *,
              copy: bool = True) -> torch.Tensor | None:
    """
    Return one tensor whose row blocks are ``parts``, re-pointing the parts into it if needed.

    Cheap when nothing changed (a few pointer comparisons). Otherwise a new tensor is made (the
    concatenation, or uninitialised memory with ``copy=False``) and every part's ``.data`` becomes
    a view of its rows, so in-place updates of the parameters (loading, optimisers) keep both in
    sync. The new tensor is a normal tensor even inside ``torch.inference_mode``.

    Args:
        parts: Tensors (usually Parameters) with equal trailing shapes, dtypes and devices.
        base: The previous result or None.
        copy: Copy the values of the parts (False: only allocate; for fresh models).

    Returns:
        The fused (sum of rows, ...) tensor, or None where the parts cannot be fused (meta
        tensors, mixed dtypes or devices).
    """
    if base is not None and _is_fused(parts, base):
        return base
    first = parts[0]
    if first.is_meta or any(p.dtype != first.dtype or p.device != first.device
                            or p.shape[1:] != first.shape[1:] for p in parts):
        return None
    rows = sum(p.shape[0] for p in parts)
    with torch.inference_mode(False), torch.no_grad():
        if copy:
            fused = torch.cat([p.detach() for p in parts], 0)
        else:
            fused = torch.empty((rows, *first.shape[1:]), dtype=first.dtype, device=first.device)
        offset = 0
        for p in parts:
            n = p.shape[0]
            p.data = fused[offset:offset + n]
            offset += n
    return fused
