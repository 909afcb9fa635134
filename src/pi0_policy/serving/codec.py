"""
The msgpack-numpy wire format of openpi's websocket protocol (pi0_model_spec.md §8).

An ndarray travels as a map with bytes keys ``__ndarray__``, ``data`` (raw C-order bytes),
``dtype`` (numpy dtype string such as ``'<f4'``) and ``shape``; a numpy scalar as
``__npgeneric__``, ``data``, ``dtype``. Object, void and complex dtypes are refused both ways (no
pickle). Decoding is strict: a frame that is not msgpack, an array whose byte count does not match
its shape, or a refused dtype raise ``ValueError`` naming what was wrong.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

# Map keys of an encoded ndarray / numpy scalar (bytes, as openpi-client writes them).
NDARRAY_KEY = b'__ndarray__'
NPGENERIC_KEY = b'__npgeneric__'
DATA_KEY = b'data'
DTYPE_KEY = b'dtype'
SHAPE_KEY = b'shape'
# numpy dtype kinds that never travel: void (structured), object (pickle) and complex.
REFUSED_KINDS = ('V', 'O', 'c')


class FrameError(ValueError):
    """A frame that decodes as msgpack but holds a malformed or refused array."""


def _encode(obj: Any) -> Any:
    """Encode numpy arrays and scalars for msgpack (its ``default`` hook)."""
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in REFUSED_KINDS:
        raise ValueError(f'Cannot send numpy dtype {obj.dtype}: object, void and complex arrays '
                         'are not part of the protocol; convert to a numeric dtype.')
    if isinstance(obj, np.ndarray):
        return {NDARRAY_KEY: True, DATA_KEY: np.ascontiguousarray(obj).tobytes(),
                DTYPE_KEY: obj.dtype.str, SHAPE_KEY: list(obj.shape)}
    if isinstance(obj, np.generic):
        return {NPGENERIC_KEY: True, DATA_KEY: obj.item(), DTYPE_KEY: obj.dtype.str}
    raise TypeError(f'Cannot encode {type(obj).__name__} in a msgpack-numpy frame; send dicts, '
                    'lists, str, numbers, bytes and numpy arrays.')


def _dtype(value: Any) -> np.dtype:
    try:
        dtype = np.dtype(value.decode() if isinstance(value, bytes) else value)
    except TypeError as e:
        raise FrameError(f'Encoded array has an unknown dtype {value!r}.') from e
    if dtype.kind in REFUSED_KINDS or dtype.hasobject:
        raise FrameError(f'Encoded array has the refused dtype {dtype} (object, void or complex).')
    return dtype


def _decode(obj: dict) -> Any:
    """Rebuild numpy arrays and scalars (msgpack's ``object_hook``)."""
    if NDARRAY_KEY in obj:
        dtype = _dtype(obj.get(DTYPE_KEY))
        shape, data = obj.get(SHAPE_KEY), obj.get(DATA_KEY)
        if (not isinstance(shape, (list, tuple)) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
            raise FrameError(f'Encoded array has the shape {shape!r}; expected a list of '
                             'non-negative integers.')
        if not isinstance(data, bytes):
            raise FrameError(f'Encoded array data is {type(data).__name__}; expected bytes.')
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if len(data) != expected:
            raise FrameError(f'Encoded array of shape {list(shape)} and dtype {dtype} carries '
                             f'{len(data)} bytes; expected {expected}.')
        return np.ndarray(buffer=data, dtype=dtype, shape=tuple(shape))
    if NPGENERIC_KEY in obj:
        return _dtype(obj.get(DTYPE_KEY)).type(obj.get(DATA_KEY))
    return obj


def packb(obj: Any) -> bytes:
    """
    Encode a message (dicts, lists, str, numbers, numpy arrays) as one binary frame.

    Raises:
        ValueError: an array of a refused dtype (object, void, complex).
        TypeError: an object msgpack cannot encode.

    """
    return msgpack.packb(obj, default=_encode)


def unpackb(data: bytes) -> Any:
    """
    Decode one binary frame; arrays come back read-only (they view the frame's bytes).

    Raises:
        ValueError: the frame is not msgpack or holds a malformed or refused array.

    """
    try:
        return msgpack.unpackb(data, object_hook=_decode, strict_map_key=False)
    except FrameError:
        raise
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as e:
        raise ValueError(f'Frame of {len(data)} bytes is not valid msgpack: {e}') from e
