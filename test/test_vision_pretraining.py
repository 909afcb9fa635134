"""Sim vision pretraining: object masks, token targets, a tower that finds the cube."""

import json

import numpy as np
from pi0_policy.model.init import init_random
from pi0_policy.model.pi0 import build_empty
from pi0_policy.sim import vision_pretraining
from pi0_policy.sim.aloha import AlohaSim, AlohaSimConfig, TOP_CAMERA
from pi0_policy.training.config import preset
from pi0_policy.training.train import load_vision_tower, train
import pytest
from safetensors.torch import load_file
from test_train import _config, dataset  # noqa: F401 (the mock-robot dataset fixture)
import torch

torch.set_num_threads(1)


def test_object_mask_marks_exactly_the_cube_pixels():
    """The segmentation mask is where the red cube is drawn, in the air and on the table."""
    sim = AlohaSim(AlohaSimConfig(image_height=96, image_width=128))
    try:
        for seed, settle in ((3, 0), (4, 30)):
            sim.reset(seed)
            if settle:
                sim.step(settle)
            image = sim.render(TOP_CAMERA).astype(int)
            mask = sim.object_mask(TOP_CAMERA)
            red = (image[..., 0] - image[..., 1]) > 50
            assert mask.sum() >= 4
            np.testing.assert_array_equal(mask, red)
        with pytest.raises(ValueError, match="Camera 'nope' is not in the ALOHA scene"):
            sim.object_mask('nope')
    finally:
        sim.close()


def test_token_targets_follow_the_policy_resize():
    """Targets are in model-input pixels: through resize_with_pad's scale and padding."""
    masks = np.zeros((3, 112, 112), bool)
    masks[0, 30:32, 60:62] = True  # centre (31, 61) px = (2.214, 4.357) patches
    wide = np.zeros((1, 96, 128), bool)
    wide[0, 40:44, 64:68] = True  # centre (42, 66) -> x 0.875, +14 rows of padding
    token, offset, visible = vision_pretraining.token_targets(masks, 112, 14)
    assert token[0] == 2 * 8 + 4
    np.testing.assert_allclose(offset[0], [31 / 14 - 2.5, 61 / 14 - 4.5], atol=1e-6)
    assert list(visible) == [True, False, False]
    token, offset, visible = vision_pretraining.token_targets(wide, 112, 14)
    centre = np.array([42 * 0.875 + 14, 66 * 0.875]) / 14
    assert visible[0] and token[0] == int(centre[0]) * 8 + int(centre[1])
    np.testing.assert_allclose(offset[0], centre - np.floor(centre) - 0.5, atol=0.05)


def test_pretrained_tower_places_the_cube_and_starts_a_new_model(dataset, tmp_path):  # noqa: F811
    """A tiny tower learns the cube's token on held-out poses; train --vision-init loads it."""
    out = tmp_path / 'tower.safetensors'
    assert vision_pretraining.main([
        '--out', str(out), '--arch', 'tiny', '--image-size', '112', '--frames', '300',
        '--test-frames', '60', '--steps', '300', '--batch-size', '32', '--threads', '1']) == 0
    report = json.loads(out.with_suffix('.json').read_text())
    # The bar: naming the held-out frames' mean cube centre every time.
    held_out = vision_pretraining.render_frames(60, report['seed'] + 300)
    token, offset, _ = vision_pretraining.token_targets(held_out.masks, 112, 14)
    centre = (np.stack([token // 8, token % 8], -1) + 0.5 + offset) * 14
    spread = np.linalg.norm(centre - centre.mean(0), axis=-1).mean()
    assert report['held_out_mean_error_px'] < 0.5 * spread, (report, spread)
    assert report['loss_last_100'] < 0.5 * report['loss_first_100'], report

    model = init_random(build_empty(preset('tiny', num_cameras=1, image_size=112)), seed=0)
    saved = load_file(str(out))
    # The whole tower trained, not only the head: every tensor left its initial value.
    unchanged = [name for name, tensor in model.vision.state_dict().items()
                 if torch.equal(tensor, saved[name])]
    assert not unchanged
    load_vision_tower(model, out)
    for name, tensor in model.vision.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)
    result = train(_config(dataset, tmp_path / 'run', num_cameras=1, image_size=112, steps=1,
                           decay_steps=1, vision_init=out), progress=False)
    assert np.isfinite(result.losses).all()
    with pytest.raises(ValueError, match='does not fit the tower of this model'):
        train(_config(dataset, tmp_path / 'bad', num_cameras=1, steps=1, decay_steps=1,
                      vision_init=out), progress=False)
    with pytest.raises(ValueError, match='vision_init .* is not a file'):
        load_vision_tower(model, tmp_path / 'missing.safetensors')
    with pytest.raises(ValueError, match='a fine-tuned or resumed run keeps its checkpoint'):
        _config(dataset, tmp_path / 'x', init_from=result.checkpoint, vision_init=out)
    with pytest.raises(SystemExit):
        vision_pretraining.main(['--out', str(tmp_path / 't.safetensors'), '--frames', '0'])
