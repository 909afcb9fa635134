"""Tests of the unified 18-dim layout and pad/trim."""

from embodiment_adapters import unified
from embodiment_adapters.unified import (
    BASE_0, BASE_1, BASE_2, LEFT_ARM, LEFT_GRIPPER, OPENPI_MODEL_WIDTH, pad, PAPER_MODEL_WIDTH,
    RIGHT_ARM, RIGHT_GRIPPER, TORSO, trim, UNIFIED_DIM, UNIFIED_NAMES)
import numpy as np
import pytest

WIDTHS = (PAPER_MODEL_WIDTH, OPENPI_MODEL_WIDTH)


def test_layout_matches_openpi_first_16_dims():
    """Check the documented index layout (0-15 as in openpi's 32-wide vector)."""
    assert UNIFIED_DIM == 18
    assert list(range(18))[LEFT_ARM] == [0, 1, 2, 3, 4, 5]
    assert LEFT_GRIPPER == 6
    assert list(range(18))[RIGHT_ARM] == [7, 8, 9, 10, 11, 12]
    assert RIGHT_GRIPPER == 13
    assert (BASE_0, BASE_1, BASE_2, TORSO) == (14, 15, 16, 17)
    assert len(UNIFIED_NAMES) == UNIFIED_DIM == len(set(UNIFIED_NAMES))
    assert unified.MODEL_IMAGE_KEYS == ('base_0_rgb', 'left_wrist_0_rgb', 'right_wrist_0_rgb')


@pytest.mark.parametrize('width', WIDTHS)
@pytest.mark.parametrize('shape', [(UNIFIED_DIM,), (50, UNIFIED_DIM), (2, 50, UNIFIED_DIM)])
def test_pad_then_trim_is_identity(width, shape):
    """Pad to the model width, then trim back: same values, zeros in the padding."""
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    padded = pad(x, width)
    assert padded.shape == shape[:-1] + (width,)
    assert padded.dtype == x.dtype
    assert np.all(padded[..., UNIFIED_DIM:] == 0)
    np.testing.assert_array_equal(trim(padded), x)


def test_pad_shorter_robot_vector_and_trim_to_dim():
    """A robot-width vector (e.g. 14) pads with zeros; trim keeps a requested prefix."""
    x = np.arange(14, dtype=np.float64)
    padded = pad(x, OPENPI_MODEL_WIDTH)
    np.testing.assert_array_equal(padded[:14], x)
    assert np.all(padded[14:] == 0)
    np.testing.assert_array_equal(trim(padded, 14), x)


def test_trim_returns_a_copy():
    """Writing to the trimmed array leaves the model output alone."""
    y = np.ones((3, OPENPI_MODEL_WIDTH))
    t = trim(y)
    t[:] = 5
    assert np.all(y == 1)


def test_pad_errors():
    """Too small a width, or a scalar, is rejected with a message that says what to do."""
    with pytest.raises(ValueError, match=r'width=10, smaller than .*\(shape \(18,\)\).*trim\(\)'):
        pad(np.zeros(UNIFIED_DIM), 10)
    with pytest.raises(ValueError, match='got a scalar'):
        pad(np.float64(1.0), PAPER_MODEL_WIDTH)


def test_trim_errors():
    """Too narrow an input is rejected, naming the shape and the expected dim."""
    with pytest.raises(ValueError, match=r'shape \(50, 14\), narrower than dim=18'):
        trim(np.zeros((50, 14)))
    with pytest.raises(ValueError, match='a scalar'):
        trim(np.float64(1.0))
