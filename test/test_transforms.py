"""Tests of image preprocessing, normalization statistics and delta actions."""

import json
from pathlib import Path

import numpy as np
from openpi_client import image_tools
from pi0_policy.runtime import transforms as tf
import pytest

MODEL_SIZE = 224
# (height, width) of test images: landscape, portrait, square, odd sizes, up- and down-scaling.
IMAGE_SIZES = [(480, 640), (640, 480), (100, 100), (37, 101), (224, 224), (301, 203), (50, 300)]
STATE_WIDTH = 14
UNIFIED_WIDTH = 18


@pytest.mark.parametrize('size', IMAGE_SIZES)
def test_resize_with_pad_equals_openpi_client(size):
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
    ours = tf.resize_with_pad(image, MODEL_SIZE, MODEL_SIZE)
    ref = image_tools.resize_with_pad(image, MODEL_SIZE, MODEL_SIZE)
    assert ours.shape == (MODEL_SIZE, MODEL_SIZE, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, ref)


def test_resize_with_pad_batch_and_non_square_target():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 3, 60, 90, 3), dtype=np.uint8)
    ours = tf.resize_with_pad(images, 48, 64)
    assert ours.shape == (2, 3, 48, 64, 3)
    np.testing.assert_array_equal(ours, image_tools.resize_with_pad(images, 48, 64))


def test_resize_with_pad_is_centred_on_black():
    image = np.full((100, 200, 3), 255, dtype=np.uint8)
    out = tf.resize_with_pad(image, MODEL_SIZE, MODEL_SIZE)
    # 200x100 → 224x112, offsets (56, 0): black bands above and below.
    assert (out[:56] == 0).all() and (out[56 + 112:] == 0).all()
    assert (out[56:56 + 112] == 255).all()


def test_image_to_model_range_and_layout():
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[0, 0] = [0, 128, 255]
    out = tf.image_to_model(image)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [-1.0, 128 / 255 * 2 - 1, 1.0], atol=1e-6)
    assert (out[:, 1, :] == -1.0).all()
    black = tf.black_image(4, 5)
    assert black.shape == (3, 4, 5) and (black == -1.0).all()


def strided_views(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Return views of ``rgb`` laid out as decoded camera messages are (no pixel copies)."""
    height, width, _ = rgb.shape
    padded = np.zeros((height, width * 3 + 5), np.uint8)  # rows padded by 5 bytes
    padded[:, :width * 3] = rgb.reshape(height, -1)
    rgba = np.concatenate([rgb, np.full((height, width, 1), 7, np.uint8)], axis=2)
    return {
        'row_padded': padded[:, :width * 3].reshape(height, width, 3),
        'bgr': np.ascontiguousarray(rgb[:, :, ::-1])[:, :, ::-1],  # negative channel stride
        'rgba': rgba[:, :, :3],  # pixel stride 4
        'bgra': np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]])[:, :, 2::-1],
    }


@pytest.mark.parametrize('size', [(480, 640), (37, 101), (301, 203)])
def test_resize_with_pad_of_strided_views_equals_openpi_client(size):
    rng = np.random.default_rng(size[0])
    rgb = rng.integers(0, 256, size + (3,), dtype=np.uint8)
    ref = image_tools.resize_with_pad(rgb, MODEL_SIZE, MODEL_SIZE)
    for name, view in strided_views(rgb).items():
        np.testing.assert_array_equal(view, rgb)
        np.testing.assert_array_equal(tf.resize_with_pad(view, MODEL_SIZE, MODEL_SIZE), ref,
                                      err_msg=name)
    # A mono camera: one channel broadcast to three (zero stride) is resized once.
    gray = rgb[:, :, 1]
    mono = np.broadcast_to(gray[:, :, None], size + (3,))
    np.testing.assert_array_equal(
        tf.resize_with_pad(mono, MODEL_SIZE, MODEL_SIZE),
        image_tools.resize_with_pad(np.repeat(gray[:, :, None], 3, axis=2), MODEL_SIZE,
                                    MODEL_SIZE))


@pytest.mark.parametrize('size', [(480, 640), (640, 480), (224, 224), (37, 101), (50, 300)])
def test_fused_resize_to_model_is_bit_identical(size):
    rng = np.random.default_rng(size[1])
    rgb = rng.integers(0, 256, size + (3,), dtype=np.uint8)
    ref = tf.image_to_model(image_tools.resize_with_pad(rgb, MODEL_SIZE, MODEL_SIZE))
    batch = np.full((2, 3, MODEL_SIZE, MODEL_SIZE), np.nan, np.float32)  # (C, 3, H, W)
    out = tf.resize_with_pad_to_model(rgb[:, :, ::-1][:, :, ::-1], MODEL_SIZE, MODEL_SIZE,
                                      out=batch[1])
    assert out.base is batch and np.isnan(batch[0]).all()
    np.testing.assert_array_equal(batch[1], ref)  # every pixel written, padding included
    np.testing.assert_array_equal(tf.resize_with_pad_to_model(rgb, MODEL_SIZE, MODEL_SIZE), ref)


def test_image_to_model_matches_the_float32_formula():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = np.stack([values, values.T, 255 - values], axis=2)  # (16, 16, 3), every value
    expected = (np.transpose(image, (2, 0, 1)).astype(np.float32) * np.float32(2.0 / 255.0)
                - np.float32(1.0))
    np.testing.assert_array_equal(tf.image_to_model(image), expected)


def test_fused_resize_to_model_rejects_a_wrong_out_array():
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r'out has shape \(3, 8, 8\) and dtype float64; '
                                         r'expected \(3, 4, 4\) float32'):
        tf.resize_with_pad_to_model(image, 4, 4, out=np.zeros((3, 8, 8)))


def test_check_rgb_image_errors():
    good = np.zeros((4, 4, 3), np.uint8)
    assert tf.check_rgb_image(good) is good
    with pytest.raises(ValueError, match=r'cam_high: expected shape \(H, W, 3\).*got \(3, 4, 4\)'):
        tf.check_rgb_image(np.zeros((3, 4, 4), np.uint8), 'cam_high')
    with pytest.raises(ValueError, match=r'expected shape .* got \(4, 4, 4\)'):
        tf.check_rgb_image(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match='expected dtype uint8.*got float32'):
        tf.check_rgb_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match='as a numpy array.*got list'):
        tf.check_rgb_image([[0, 0, 0]])


def make_stats(width: int, seed: int = 0, quantiles: bool = True) -> tf.NormStats:
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=width)
    std = rng.uniform(0.1, 2.0, size=width)
    data = {'mean': mean, 'std': std}
    if quantiles:
        data.update(q01=mean - 2 * std, q99=mean + 2 * std)
    return tf.NormStats.from_dict(data)


@pytest.mark.parametrize('mode', list(tf.NormMode))
def test_normalize_round_trip(mode):
    stats = make_stats(STATE_WIDTH)
    x = np.random.default_rng(3).normal(size=(5, UNIFIED_WIDTH))
    y = tf.normalize(x, stats, mode)
    # Only the leading dims the stats cover change.
    np.testing.assert_array_equal(y[:, STATE_WIDTH:], x[:, STATE_WIDTH:])
    assert not np.allclose(y[:, :STATE_WIDTH], x[:, :STATE_WIDTH])
    np.testing.assert_allclose(tf.unnormalize(y, stats, mode), x, atol=1e-12)


def test_zscore_and_quantile_formulas_with_eps():
    stats = tf.NormStats.from_dict(
        {'mean': [1.0, 0.0], 'std': [2.0, 0.0], 'q01': [0.0, 5.0], 'q99': [4.0, 5.0]})
    x = np.array([3.0, 0.5])
    np.testing.assert_allclose(
        tf.normalize(x, stats), [2.0 / (2.0 + tf.NORM_EPS), 0.5 / tf.NORM_EPS])
    np.testing.assert_allclose(
        tf.normalize(x, stats, tf.NormMode.QUANTILE),
        [3.0 / (4.0 + tf.NORM_EPS) * 2 - 1, (0.5 - 5.0) / tf.NORM_EPS * 2 - 1])
    np.testing.assert_allclose(
        tf.unnormalize(np.array([1.0, 1.0]), stats), [2.0 + tf.NORM_EPS + 1.0, tf.NORM_EPS])


def test_stats_wider_than_vector_are_sliced():
    stats = make_stats(UNIFIED_WIDTH)
    x = np.ones(4)
    expected = (x - stats.mean[:4]) / (stats.std[:4] + tf.NORM_EPS)
    np.testing.assert_allclose(tf.normalize(x, stats), expected)


def test_quantile_without_quantiles_errors():
    stats = make_stats(3, quantiles=False)
    with pytest.raises(ValueError, match='Quantile normalization needs q01 and q99'):
        tf.normalize(np.zeros(3), stats, tf.NormMode.QUANTILE)


def test_norm_stats_validation():
    with pytest.raises(ValueError, match=r"lack \['std'\]"):
        tf.NormStats.from_dict({'mean': [0.0]})
    with pytest.raises(ValueError, match='must be 1-D vectors of one length'):
        tf.NormStats.from_dict({'mean': [0.0, 1.0], 'std': [1.0]})


def write_stats(root: Path, asset_id: str, width: int = STATE_WIDTH) -> dict:
    stats = make_stats(width)
    entry = {k: getattr(stats, k).tolist() for k in ('mean', 'std', 'q01', 'q99')}
    data = {'norm_stats': {'state': entry, 'actions': entry}}
    folder = root / 'assets' / asset_id
    folder.mkdir(parents=True)
    (folder / 'norm_stats.json').write_text(json.dumps(data))
    return data


def test_normalizer_from_checkpoint_asset_selection(tmp_path, caplog):
    identity = tf.Normalizer.from_checkpoint(None)  # only the tiny random model has no stats
    assert identity.is_identity and 'NOT normalized' in caplog.text
    assert identity.source is None and identity.asset_id is None
    x = np.arange(3.0)
    np.testing.assert_array_equal(identity.normalize_state(x), x)
    np.testing.assert_array_equal(identity.unnormalize_actions(x), x)
    data = write_stats(tmp_path, 'aloha')
    norm = tf.Normalizer.from_checkpoint(tmp_path)
    np.testing.assert_allclose(norm.state.mean, data['norm_stats']['state']['mean'])
    assert norm.asset_id == 'aloha'
    assert norm.source == tmp_path / 'assets' / 'aloha' / 'norm_stats.json'
    assert tf.Normalizer.from_checkpoint(tmp_path, 'aloha').actions.width == STATE_WIDTH
    with pytest.raises(ValueError, match=r"Asset id 'droid' .* available asset ids: \['aloha'\]"):
        tf.Normalizer.from_checkpoint(tmp_path, 'droid')
    write_stats(tmp_path, 'droid')
    with pytest.raises(ValueError, match=r"several asset ids \['aloha', 'droid'\]"):
        tf.Normalizer.from_checkpoint(tmp_path)
    assert not tf.Normalizer.from_checkpoint(tmp_path, 'droid').is_identity


def test_real_checkpoint_without_norm_stats_is_an_error(tmp_path):
    (tmp_path / 'assets' / 'trossen').mkdir(parents=True)  # an asset folder, but no stats
    with pytest.raises(ValueError) as info:
        tf.Normalizer.from_checkpoint(tmp_path)
    message = str(info.value)
    assert f"Checkpoint '{tmp_path}' has no norm stats" in message
    assert f"under '{tmp_path / 'assets'}'" in message  # where it looked
    assert f"or '{tmp_path.parent / 'assets'}'" in message  # the converter's parent folder too
    # What to do: the exact file to copy and where.
    assert 'copy assets/<asset_id>/norm_stats.json of the openpi checkpoint' in message
    assert f"to '{tmp_path / 'assets' / '<asset_id>' / 'norm_stats.json'}'" in message
    assert tf.find_norm_stats(tmp_path) is None


def test_nested_asset_ids_as_openpi_names_them(tmp_path):
    nested = 'lerobot/aloha_sim_transfer_cube_human'
    data = write_stats(tmp_path, nested, width=5)
    write_stats(tmp_path, 'trossen')
    (tmp_path / 'assets' / 'norm_stats.json').write_text('{}')  # not in an asset folder: no id
    assert tf.list_asset_ids(tmp_path) == [nested, 'trossen']
    norm = tf.Normalizer.from_checkpoint(tmp_path, nested)
    assert norm.asset_id == nested and norm.state.width == 5
    np.testing.assert_allclose(norm.actions.std, data['norm_stats']['actions']['std'])
    with pytest.raises(ValueError, match=r"several asset ids \['lerobot/aloha_sim_transfer"):
        tf.Normalizer.from_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"Asset id 'lerobot' has no norm_stats.json .*"
                                         r"looked for '.*/assets/lerobot/norm_stats.json'"):
        tf.find_norm_stats(tmp_path, 'lerobot')
    for bad in ('', '/etc', '../other'):
        with pytest.raises(ValueError, match='must be a non-empty path relative to the assets/'):
            tf.find_norm_stats(tmp_path, bad)
    only = tmp_path / 'only'
    write_stats(only, nested)
    assert tf.Normalizer.from_checkpoint(only).asset_id == nested  # the only one, found nested


def test_normalizer_round_trip_and_bad_files(tmp_path):
    write_stats(tmp_path, 'a')
    norm = tf.Normalizer.from_checkpoint(tmp_path, mode=tf.NormMode.QUANTILE)
    state = np.random.default_rng(0).normal(size=UNIFIED_WIDTH)
    np.testing.assert_allclose(norm.unnormalize_state(norm.normalize_state(state)), state)
    actions = np.random.default_rng(1).normal(size=(7, UNIFIED_WIDTH))
    np.testing.assert_allclose(norm.unnormalize_actions(norm.normalize_actions(actions)), actions)
    path = tmp_path / 'assets' / 'a' / 'norm_stats.json'
    path.write_text('{"state": {}}')
    with pytest.raises(ValueError, match='is not an openpi norm_stats.json'):
        tf.Normalizer.from_checkpoint(tmp_path)
    path.write_text('{"norm_stats": {"state": {"mean": [0], "std": [1]}}}')
    with pytest.raises(ValueError, match=r"lacks statistics for \['actions'\]"):
        tf.Normalizer.from_checkpoint(tmp_path)
    path.write_text('{not json')
    with pytest.raises(ValueError, match='Cannot read norm stats'):
        tf.load_norm_stats(path)


def test_delta_absolute_round_trip():
    rng = np.random.default_rng(0)
    actions = rng.normal(size=(10, UNIFIED_WIDTH))
    state = rng.normal(size=UNIFIED_WIDTH)
    mask = np.zeros(UNIFIED_WIDTH, bool)
    mask[:6] = True
    absolute = tf.delta_to_absolute(actions, state, mask)
    np.testing.assert_allclose(absolute[:, :6], actions[:, :6] + state[:6])
    np.testing.assert_array_equal(absolute[:, 6:], actions[:, 6:])
    np.testing.assert_allclose(tf.absolute_to_delta(absolute, state, mask), actions)
    with pytest.raises(ValueError, match='of one width'):
        tf.delta_to_absolute(actions, state[:4], mask)
