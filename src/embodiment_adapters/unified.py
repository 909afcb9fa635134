"""
Define the unified 18-dim state/action layout shared by every embodiment.

Layout (indices 0-15 equal openpi's 32-wide layout, so public checkpoints and their norm stats line
up without remapping; see deployment_reference.md section 8.1):

- 0-5: left arm joints (a single 6-DoF arm uses this slot);
- 6: left gripper (a single 7-DoF arm puts its 7th joint here and its gripper in 7, openpi's DROID
  convention);
- 7-12: right arm joints; 13: right gripper;
- 14-15: planar base velocity, 16: third base DoF (each robot config declares which axis);
- 17: torso / lift.

The model works on a wider vector (18 as in the pi0 paper, 32 for the public openpi/LeRobot
checkpoints): `pad` appends zeros on the way in and `trim` drops the padding on the way out. All
arrays put the feature axis last: ``(..., U)`` with ``U = UNIFIED_DIM``.
"""

import numpy as np

# Width of the unified robot vector: 2 x (6 joints + gripper) + 3 base DoF + torso.
UNIFIED_DIM = 18
# Model width of the pi0 paper (equal to UNIFIED_DIM).
PAPER_MODEL_WIDTH = 18
# Model width of the public openpi / LeRobot pi0 checkpoints.
OPENPI_MODEL_WIDTH = 32

LEFT_ARM = slice(0, 6)
LEFT_GRIPPER = 6
RIGHT_ARM = slice(7, 13)
RIGHT_GRIPPER = 13
# Base velocity dims; what each one means (linear x/y, yaw rate) is declared per robot config.
BASE_0 = 14
BASE_1 = 15
BASE_2 = 16
TORSO = 17
BASE_DIMS = (BASE_0, BASE_1, BASE_2)
GRIPPER_DIMS = (LEFT_GRIPPER, RIGHT_GRIPPER)

# Generic name of each unified dim (robot configs give the robot's own joint names).
UNIFIED_NAMES = (
    tuple(f'left_arm_{i}' for i in range(LEFT_ARM.stop - LEFT_ARM.start))
    + ('left_gripper',)
    + tuple(f'right_arm_{i}' for i in range(RIGHT_ARM.stop - RIGHT_ARM.start))
    + ('right_gripper', 'base_0', 'base_1', 'base_2', 'torso')
)

# Model image slots of pi0, in order; robot configs map cameras to these indices (0, 1, 2).
MODEL_IMAGE_KEYS = ('base_0_rgb', 'left_wrist_0_rgb', 'right_wrist_0_rgb')

assert len(UNIFIED_NAMES) == UNIFIED_DIM


def pad(x: np.ndarray, width: int) -> np.ndarray:
    """
    Zero-pad the last axis of ``x`` up to the model width.

    Args:
        x: array of shape (..., D) with D <= width (usually D = UNIFIED_DIM).
        width: model width, e.g. PAPER_MODEL_WIDTH (18) or OPENPI_MODEL_WIDTH (32).

    Returns:
        Array of shape (..., width): ``x`` in the first D entries, zeros elsewhere.

    Raises:
        ValueError: if ``x`` is a scalar or wider than ``width``.

    """
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError(
            f'pad() got a scalar ({x!r}); expected an array whose last axis holds the unified '
            'dims, e.g. shape (18,) or (H, 18).')
    if width < x.shape[-1]:
        raise ValueError(
            f'pad() got width={width}, smaller than the last axis of the input '
            f'(shape {x.shape}); use trim() to shrink, or pass a width >= {x.shape[-1]}.')
    out = np.zeros(x.shape[:-1] + (width,), dtype=x.dtype)
    out[..., :x.shape[-1]] = x
    return out


def trim(x: np.ndarray, dim: int = UNIFIED_DIM) -> np.ndarray:
    """
    Keep the first ``dim`` entries of the last axis (model width -> unified width).

    Args:
        x: array of shape (..., W) with W >= dim, e.g. a (H, 32) model output.
        dim: number of leading dims to keep; UNIFIED_DIM by default.

    Returns:
        A copy of shape (..., dim).

    Raises:
        ValueError: if ``x`` is a scalar or narrower than ``dim``.

    """
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[-1] < dim:
        shape = x.shape if x.ndim else 'a scalar'
        raise ValueError(
            f'trim() got an input of shape {shape}, narrower than dim={dim}; expected the '
            f'model output with at least {dim} entries on the last axis (check the model width).')
    return x[..., :dim].copy()
