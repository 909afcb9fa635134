"""Tests of the input/output pipeline and the Pi0Policy facade with the tiny π0 (CPU torch)."""

from concurrent.futures import ThreadPoolExecutor
import dataclasses
import json
from pathlib import Path

import embodiment_adapters
from embodiment_adapters import unified
from embodiment_adapters.config import find_robot_config
import numpy as np
from pi0_policy.model import checkpoint
from pi0_policy.model.pi0 import build_empty, init_random
from pi0_policy.runtime import pipeline as pl
from pi0_policy.runtime import policy as pol
from pi0_policy.runtime import transforms as tf
from pi0_policy.runtime.config import PolicyLoadConfig
from pi0_policy.runtime.tokenizer import BOS_ID, DEFAULT_MAX_TOKEN_LEN, PromptTokenizer
import pytest
from safetensors.torch import save_file
from test_tokenizer import train_sentencepiece
import torch

ROBOT_CONFIG_DIR = Path(__file__).resolve().parents[1] / 'config' / 'robots'
SHIPPED_ROBOTS = sorted(p.stem for p in ROBOT_CONFIG_DIR.glob('*.yaml'))
# Robot with one required and two optional model cameras plus an unused one, and delta joints.
MULTI_CAMERA_ROBOT = 'aloha'
MODEL_IMAGE_SIZE = 224
MODEL_WIDTH = unified.OPENPI_MODEL_WIDTH
HORIZON = 50
# Fewer denoising steps keep the end-to-end tests fast on two shared cores.
TEST_STEPS = 2
ASSET_ID = 'test_robot'
TOKENIZER_VOCAB = 120
CHECKPOINT_SEED = 7


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def observation(adapter, seed: int = 0, drop: tuple[str, ...] = ()) -> dict:
    """Return a valid observation of an adapter without the cameras in ``drop``."""
    example = adapter.make_example(np.random.default_rng(seed), image_hw=(48, 64))
    state = adapter.state_from_joint_states(
        example['names'], example['positions'], example.get('base_velocity'))
    images = {k: v for k, v in example['images'].items() if k not in drop}
    return {'images': images, 'state': state, 'prompt': example['prompt']}


def make_pipeline(adapter, normalizer: tf.Normalizer | None = None) -> pl.Pi0Pipeline:
    return pl.Pi0Pipeline(
        adapter, PromptTokenizer.fallback(1000), normalizer or tf.Normalizer(),
        image_size=MODEL_IMAGE_SIZE, num_cameras=len(unified.MODEL_IMAGE_KEYS),
        state_dim=MODEL_WIDTH, action_dim=MODEL_WIDTH)


def stats_for(width: int, seed: int) -> tf.NormStats:
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=width)
    std = rng.uniform(0.5, 2.0, size=width)
    return tf.NormStats(mean=mean, std=std, q01=mean - 2 * std, q99=mean + 2 * std)


# ---------------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize('robot', SHIPPED_ROBOTS)
def test_pipeline_shapes_for_each_shipped_robot(robot):
    adapter = embodiment_adapters.load_adapter(robot)
    pipe = make_pipeline(adapter)
    inputs = pipe.prepare(observation(adapter))
    slots = len(unified.MODEL_IMAGE_KEYS)
    assert inputs.images.shape == (slots, 3, MODEL_IMAGE_SIZE, MODEL_IMAGE_SIZE)
    assert inputs.images.dtype == np.float32
    assert inputs.images.min() >= -1.0 and inputs.images.max() <= 1.0
    fed = {c.model_slot for c in adapter.cameras if c.model_slot is not None}
    assert inputs.image_masks.tolist() == [s in fed for s in range(slots)]
    for slot in set(range(slots)) - fed:
        assert (inputs.images[slot] == tf.BLACK_MODEL_VALUE).all()
    assert inputs.state.shape == (MODEL_WIDTH,) and inputs.state.dtype == np.float32
    assert (inputs.state[unified.UNIFIED_DIM:] == 0).all()
    assert inputs.tokens.shape == inputs.token_masks.shape == (DEFAULT_MAX_TOKEN_LEN,)
    model_out = np.random.default_rng(0).normal(size=(HORIZON, MODEL_WIDTH))
    unified_actions, robot_actions = pipe.finish(model_out, inputs)
    assert unified_actions.shape == (HORIZON, unified.UNIFIED_DIM)
    assert robot_actions.shape == (HORIZON, adapter.dof)
    assert np.isfinite(robot_actions).all()


def test_pipeline_order_normalize_pad_unnormalize_delta():
    assert MULTI_CAMERA_ROBOT in SHIPPED_ROBOTS, f'no robot configs found in {ROBOT_CONFIG_DIR}'
    adapter = embodiment_adapters.load_adapter(MULTI_CAMERA_ROBOT)
    assert adapter.delta_mask.any(), 'the test needs a robot with delta joints'
    native = len(adapter.state_names)
    normalizer = tf.Normalizer(state=stats_for(native, 1), actions=stats_for(native, 2))
    pipe = make_pipeline(adapter, normalizer)
    obs = observation(adapter)
    inputs = pipe.prepare(obs)
    unified_state = adapter.state_to_unified(obs['state'])
    np.testing.assert_allclose(inputs.unified_state, unified_state)
    expected_state = unified.pad(tf.normalize(unified_state, normalizer.state), MODEL_WIDTH)
    np.testing.assert_allclose(inputs.state, expected_state, rtol=1e-6, atol=1e-6)
    model_out = np.random.default_rng(3).normal(size=(HORIZON, MODEL_WIDTH))
    unified_actions, robot_actions = pipe.finish(model_out, inputs)
    absolute = tf.unnormalize(model_out[:, :unified.UNIFIED_DIM], normalizer.actions)
    absolute[:, adapter.delta_mask] += unified_state[adapter.delta_mask]
    np.testing.assert_allclose(unified_actions, absolute)
    np.testing.assert_allclose(robot_actions, adapter.actions_from_unified(absolute))


def test_pipeline_missing_optional_camera_is_black_and_masked():
    adapter = embodiment_adapters.load_adapter(MULTI_CAMERA_ROBOT)
    optional = next(c for c in adapter.cameras if not c.required and c.model_slot is not None)
    inputs = make_pipeline(adapter).prepare(observation(adapter, drop=(optional.name,)))
    assert not inputs.image_masks[optional.model_slot]
    assert (inputs.images[optional.model_slot] == tf.BLACK_MODEL_VALUE).all()
    assert inputs.image_masks.sum() == len(
        [c for c in adapter.cameras if c.model_slot is not None]) - 1


def test_pipeline_errors():
    adapter = embodiment_adapters.load_adapter(MULTI_CAMERA_ROBOT)
    pipe = make_pipeline(adapter)
    required = next(c.name for c in adapter.cameras if c.required)
    with pytest.raises(ValueError, match=f"Required camera '{required}'"):
        pipe.prepare(observation(adapter, drop=(required,)))
    obs = observation(adapter)
    with pytest.raises(ValueError, match=r'State has shape \(3,\), expected \(14,\)'):
        pipe.prepare({**obs, 'state': obs['state'][:3]})
    bad_state = obs['state'].copy()
    bad_state[2] = np.nan
    with pytest.raises(ValueError, match=f'non-finite values at .*{adapter.state_names[2]}'):
        pipe.prepare({**obs, 'state': bad_state})
    with pytest.raises(ValueError, match=r"Unknown cameras \['cam_top'\]"):
        pipe.prepare({**obs, 'images': {**obs['images'], 'cam_top': obs['images'][required]}})
    with pytest.raises(ValueError, match=r"Observation lacks \['prompt'\]"):
        pipe.prepare({'images': obs['images'], 'state': obs['state']})
    float_image = obs['images'][required].astype(np.float32)
    with pytest.raises(ValueError, match='uint8'):
        pipe.prepare({**obs, 'images': {**obs['images'], required: float_image}})
    with pytest.raises(ValueError, match='must map camera names'):
        pipe.prepare({**obs, 'images': [obs['images'][required]]})


def test_pipeline_rejects_narrow_model_and_missing_slots(tmp_path):
    adapter = embodiment_adapters.load_adapter(MULTI_CAMERA_ROBOT)

    def pipeline(adapter, num_cameras=3, state_dim=32):
        return pl.Pi0Pipeline(adapter, PromptTokenizer.fallback(100), tf.Normalizer(),
                              image_size=MODEL_IMAGE_SIZE, num_cameras=num_cameras,
                              state_dim=state_dim, action_dim=32)
    with pytest.raises(ValueError, match='smaller than the unified width 18'):
        pipeline(adapter, state_dim=14)
    # A one-slot model (base camera only) leaves the optional wrist cameras unused...
    assert pipeline(adapter, num_cameras=1).unused_cameras == ('cam_left_wrist',
                                                               'cam_right_wrist')
    assert pipeline(adapter).unused_cameras == ()
    # ...but cannot serve a robot that requires a camera in a slot it lacks.
    text = find_robot_config(MULTI_CAMERA_ROBOT).read_text()
    strict = tmp_path / 'aloha_strict.yaml'
    strict.write_text(text.replace('model_slot: 2, required: false',
                                   'model_slot: 2, required: true'))
    with pytest.raises(ValueError, match=r"requires cameras \['cam_right_wrist'\] in model "
                                         r'slots \[2\], but the model has 2 camera slot'):
        pipeline(embodiment_adapters.load_adapter(str(strict)), num_cameras=2)


# ------------------------------------------------------------------------------------ policy


@pytest.fixture(scope='module')
def tiny_policy():
    policy = pol.Pi0Policy.from_checkpoint(None, MULTI_CAMERA_ROBOT, num_steps=TEST_STEPS)
    yield policy
    policy.close()


def fixed_noise(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(HORIZON, MODEL_WIDTH)).astype(np.float32)


def test_tiny_policy_end_to_end(tiny_policy):
    adapter = tiny_policy.adapter
    result = tiny_policy.infer(observation(adapter))
    assert result.actions.shape == (tiny_policy.action_horizon, adapter.dof)
    assert result.unified_actions.shape == (tiny_policy.action_horizon, unified.UNIFIED_DIM)
    assert np.isfinite(result.actions).all() and np.isfinite(result.unified_actions).all()
    np.testing.assert_allclose(result.actions, adapter.actions_from_unified(
        result.unified_actions))
    for key in (pol.TIME_PREPROCESS, pol.TIME_MODEL, pol.TIME_POSTPROCESS, pol.TIME_TOTAL):
        assert result.timing[key] >= 0.0
    assert result.timing[pol.TIME_TOTAL] >= result.timing[pol.TIME_MODEL]
    assert result.image_masks.tolist() == [True, True, True]
    assert result.prompt == adapter.EXAMPLE_PROMPT and result.num_tokens > 2
    assert not result.prompt_truncated and result.tokens.shape == (DEFAULT_MAX_TOKEN_LEN,)
    assert tiny_policy.tokenizer.is_fallback and tiny_policy.checkpoint_info is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.actions = None


def test_tiny_policy_is_deterministic_and_uses_masks(tiny_policy):
    adapter = tiny_policy.adapter
    obs = observation(adapter)
    first = tiny_policy.infer({**obs, 'noise': fixed_noise()})
    again = tiny_policy.infer({**obs, 'noise': fixed_noise()})
    np.testing.assert_array_equal(first.actions, again.actions)
    other = tiny_policy.infer({**obs, 'noise': fixed_noise(1)})
    assert not np.allclose(first.actions, other.actions)
    wrist = next(c for c in adapter.cameras if not c.required and c.model_slot is not None)
    masked = tiny_policy.infer({**observation(adapter, drop=(wrist.name,)),
                                'noise': fixed_noise()})
    assert not masked.image_masks[wrist.model_slot] and masked.image_masks.sum() == 2
    assert not np.allclose(first.actions, masked.actions)
    # Same seed → same init and same noise sequence.
    twin = pol.Pi0Policy.from_checkpoint(None, adapter, num_steps=TEST_STEPS, seed=0)
    fresh = pol.Pi0Policy.from_checkpoint(None, adapter, num_steps=TEST_STEPS, seed=0)
    np.testing.assert_array_equal(twin.infer(obs).actions, fresh.infer(obs).actions)
    twin.close()
    fresh.close()


def test_tiny_policy_errors(tiny_policy):
    obs = observation(tiny_policy.adapter)
    with pytest.raises(ValueError, match=r"observation\['noise'\] must be finite with shape"):
        tiny_policy.infer({**obs, 'noise': np.zeros((3, 3))})
    with pytest.raises(ValueError, match='non-finite values'):
        tiny_policy.infer({**obs, 'state': np.full_like(obs['state'], np.nan)})
    with pytest.raises(ValueError, match=r"Unsupported dtype 'float16'"):
        pol.Pi0Policy.from_checkpoint(None, 'mock', dtype='float16')
    with pytest.raises(TypeError, match='embodiment must be a robot name'):
        pol.Pi0Policy.from_checkpoint(None, 3)


def test_infer_from_worker_thread_and_close():
    policy = pol.Pi0Policy.from_checkpoint(None, 'mock', num_steps=TEST_STEPS)
    warm = policy.warmup()
    assert warm.actions.shape == (policy.action_horizon, policy.adapter.dof)
    obs = {**observation(policy.adapter), 'noise': fixed_noise()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(policy.infer, obs) for _ in range(2)]
        # Attributes stay readable while the worker runs.
        assert policy.num_steps == TEST_STEPS and not policy.is_closed
        results = [f.result() for f in futures]
    np.testing.assert_array_equal(results[0].actions, results[1].actions)
    policy.close()
    assert policy.is_closed
    with pytest.raises(RuntimeError, match='Pi0Policy was closed'):
        policy.infer(obs)
    policy.close()


def test_bfloat16_tiny_policy_runs():
    policy = pol.Pi0Policy.from_checkpoint(None, 'mock', dtype='bfloat16', num_steps=TEST_STEPS)
    result = policy.infer(observation(policy.adapter))
    assert policy.dtype == torch.bfloat16
    assert result.actions.dtype == np.float64 and np.isfinite(result.actions).all()
    policy.close()


# -------------------------------------------------------------------------------- checkpoints


def openpi_key(name: str) -> str:
    """Map one of this package's parameter names to openpi's PyTorch key."""
    if name == checkpoint.EMBED_KEY:
        return checkpoint.VLM_LM_HEAD
    for openpi_prefix, ours in checkpoint.PREFIX_MAP:
        if name.startswith(ours):
            return openpi_prefix + name[len(ours):]
    assert name.startswith(checkpoint.HEAD_PREFIXES), name
    return name


def write_checkpoint(root: Path, adapter, *, tokenizer: bool = True, assets=(ASSET_ID,),
                     layout: str = checkpoint.LAYOUT_OPENPI):
    """
    Write a tiny π0 checkpoint folder; return the in-memory model and config.

    The openpi layout is written here key by key (independently of the model package's writer);
    the LeRobot layout through ``checkpoint.save_pi0``.
    """
    tiny = pol.tiny_config_for(adapter)
    config = dataclasses.replace(tiny, vlm=dataclasses.replace(
        tiny.vlm, vocab_size=TOKENIZER_VOCAB))
    model = init_random(build_empty(config), seed=CHECKPOINT_SEED)
    if layout == checkpoint.LAYOUT_OPENPI:
        root.mkdir(parents=True)
        tensors = {openpi_key(k): v.contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(root / checkpoint.WEIGHTS_FILE))
        (root / checkpoint.CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config)))
    else:
        checkpoint.save_pi0(model, root, layout)
    native = len(adapter.state_names)
    for i, asset in enumerate(assets):
        folder = root / 'assets' / asset
        folder.mkdir(parents=True)
        entry = {k: list(getattr(stats_for(native, i), k)) for k in ('mean', 'std', 'q01', 'q99')}
        (folder / 'norm_stats.json').write_text(
            json.dumps({'norm_stats': {'state': entry, 'actions': entry}}))
    if tokenizer:
        train_sentencepiece(root / 'assets' / 'paligemma_tokenizer.model', TOKENIZER_VOCAB)
    return model, config


@pytest.mark.parametrize('layout', [checkpoint.LAYOUT_OPENPI, checkpoint.LAYOUT_LEROBOT])
def test_from_checkpoint_folder(tmp_path, layout):
    adapter = embodiment_adapters.load_adapter('mock')
    root = tmp_path / 'ckpt'
    model, config = write_checkpoint(root, adapter, layout=layout)
    policy = pol.Pi0Policy.from_checkpoint(root, 'mock', num_steps=TEST_STEPS)
    assert policy.config == config
    assert policy.checkpoint_info.layout == layout
    assert not policy.tokenizer.is_fallback and policy.tokenizer.vocab_size == TOKENIZER_VOCAB
    assert not policy.pipeline.normalizer.is_identity
    obs = {**observation(adapter), 'noise': fixed_noise()}
    result = policy.infer(obs)
    # The same inputs through the in-memory model that was saved give the same chunk.
    inputs = policy.pipeline.prepare(obs)
    batch = [torch.from_numpy(a)[None] for a in (
        inputs.images, inputs.image_masks, inputs.tokens, inputs.token_masks, inputs.state)]
    expected = model.sample_actions(*batch, noise=torch.from_numpy(fixed_noise())[None],
                                    num_steps=TEST_STEPS)[0].numpy()
    _, robot_actions = policy.pipeline.finish(expected, inputs)
    np.testing.assert_allclose(result.actions, robot_actions, rtol=1e-5, atol=1e-5)
    assert result.tokens[0] == BOS_ID and result.num_tokens == len(
        policy.tokenizer.encoder.encode(adapter.EXAMPLE_PROMPT, add_bos=True)) + 1
    policy.close()


def test_from_checkpoint_errors(tmp_path):
    adapter = embodiment_adapters.load_adapter('mock')
    two = tmp_path / 'two_assets'
    write_checkpoint(two, adapter, assets=('a', 'b'))
    with pytest.raises(ValueError, match=r"several asset ids \['a', 'b'\]"):
        pol.Pi0Policy.from_checkpoint(two, adapter)
    with pytest.raises(ValueError, match=r"Asset id 'c' .* \['a', 'b'\]"):
        pol.Pi0Policy.from_checkpoint(two, adapter, asset_id='c')
    assert not pol.Pi0Policy.from_checkpoint(two, adapter, asset_id='b').tokenizer.is_fallback
    bare = tmp_path / 'no_tokenizer'
    write_checkpoint(bare, adapter, tokenizer=False)
    with pytest.raises(ValueError, match='No tokenizer in checkpoint folder'):
        pol.Pi0Policy.from_checkpoint(bare, adapter)
    explicit = train_sentencepiece(tmp_path / 'tok' / 'tokenizer.model', TOKENIZER_VOCAB)
    policy = pol.Pi0Policy.from_checkpoint(bare, adapter, tokenizer_path=explicit)
    assert policy.tokenizer.encoder.name == str(explicit)


def robot_with_asset(tmp_path: Path, asset_id: str) -> Path:
    """Write a copy of the mock robot config whose norm_stats_asset_id is ``asset_id``."""
    text = (ROBOT_CONFIG_DIR / 'mock.yaml').read_text()
    assert 'norm_stats_asset_id: null' in text
    path = tmp_path / 'mock_with_asset.yaml'
    path.write_text(text.replace('norm_stats_asset_id: null',
                                 f"norm_stats_asset_id: '{asset_id}'"))
    return path


def test_robot_config_asset_id_is_the_default(tmp_path, caplog):
    caplog.set_level('INFO', logger=pol.__name__)
    root = tmp_path / 'ckpt'
    nested = 'lerobot/mock_robot'  # openpi names assets by dataset repo id
    write_checkpoint(root, embodiment_adapters.load_adapter('mock'), assets=('other', nested))
    robot = robot_with_asset(tmp_path, nested)
    policy = pol.Pi0Policy.from_checkpoint(root, robot, num_steps=TEST_STEPS)
    assert policy.norm_stats_asset_id == nested
    assert policy.pipeline.normalizer.source == root / 'assets' / nested / 'norm_stats.json'
    native = len(policy.adapter.state_names)
    np.testing.assert_allclose(policy.pipeline.normalizer.state.mean, stats_for(native, 1).mean)
    assert f"Norm stats asset '{nested}' (norm_stats_asset_id of robot config" in caplog.text
    # An explicit asset id wins over the robot config's.
    explicit = pol.Pi0Policy.from_checkpoint(root, robot, num_steps=TEST_STEPS, asset_id='other')
    assert explicit.norm_stats_asset_id == 'other'
    np.testing.assert_allclose(explicit.pipeline.normalizer.state.mean,
                               stats_for(native, 0).mean)
    assert "Norm stats asset 'other' (given explicitly)" in caplog.text


def test_single_asset_of_another_robot_is_not_used_silently(tmp_path):
    root = tmp_path / 'ckpt'
    write_checkpoint(root, embodiment_adapters.load_adapter('mock'), assets=('franka',))
    robot = robot_with_asset(tmp_path, 'trossen')
    with pytest.raises(ValueError, match=r"Asset id 'trossen' has no norm_stats.json .*"
                                         r"available asset ids: \['franka'\]"):
        pol.Pi0Policy.from_checkpoint(root, robot)
    policy = pol.Pi0Policy.from_checkpoint(root, robot, asset_id='franka', num_steps=TEST_STEPS)
    assert policy.norm_stats_asset_id == 'franka'


def test_checkpoint_without_norm_stats_fails_clearly(tmp_path):
    root = tmp_path / 'ckpt'
    write_checkpoint(root, embodiment_adapters.load_adapter('mock'), assets=())
    with pytest.raises(ValueError, match=r'has no norm stats: no assets/<asset_id>/norm_stats'):
        pol.Pi0Policy.from_checkpoint(root, 'mock')
    tiny = pol.Pi0Policy.from_checkpoint(None, 'mock', num_steps=TEST_STEPS)
    assert tiny.pipeline.normalizer.is_identity and tiny.norm_stats_asset_id is None


def test_action_mode_absolute_skips_the_delta_transform():
    adapter = embodiment_adapters.load_adapter(MULTI_CAMERA_ROBOT)
    assert adapter.delta_mask.any(), 'the test needs a robot with delta joints'
    robot_mode = pol.Pi0Policy.from_checkpoint(None, adapter, num_steps=TEST_STEPS)
    absolute_mode = pol.Pi0Policy.from_checkpoint(None, adapter, num_steps=TEST_STEPS,
                                                  action_mode='absolute')
    assert (robot_mode.action_mode, absolute_mode.action_mode) == ('robot', 'absolute')
    np.testing.assert_array_equal(robot_mode.pipeline.delta_mask, adapter.delta_mask)
    assert not absolute_mode.pipeline.delta_mask.any()
    obs = {**observation(adapter), 'noise': fixed_noise()}
    with_delta = robot_mode.infer(obs).unified_actions
    without = absolute_mode.infer(obs).unified_actions
    state = adapter.state_to_unified(obs['state'])
    # Same model and noise: 'robot' adds the state on the delta dims only, 'absolute' never.
    expected = without.copy()
    expected[:, adapter.delta_mask] += state[adapter.delta_mask]
    np.testing.assert_allclose(with_delta, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(with_delta[:, ~adapter.delta_mask],
                                  without[:, ~adapter.delta_mask])


def test_action_mode_is_validated():
    with pytest.raises(ValueError, match=r"Unknown action_mode 'delta'; expected one of "
                                         r"\['robot', 'absolute'\]"):
        pol.Pi0Policy.from_checkpoint(None, 'mock', action_mode='delta')
    adapter = embodiment_adapters.load_adapter('mock')
    with pytest.raises(ValueError, match=r"Unknown action_mode 'Robot'"):
        pl.Pi0Pipeline(adapter, PromptTokenizer.fallback(100), tf.Normalizer(),
                       image_size=MODEL_IMAGE_SIZE, num_cameras=3, state_dim=32, action_dim=32,
                       action_mode='Robot')
    load = {'checkpoint': None, 'device': 'cpu', 'dtype': 'float32', 'num_steps': 1,
            'asset_id': None, 'seed': 0, 'torch_threads': 1}
    assert PolicyLoadConfig(**load).action_mode == 'robot'
    assert PolicyLoadConfig(**load, action_mode='absolute').action_mode == 'absolute'
    with pytest.raises(ValueError, match=r"Parameter 'action_mode' is 'delta'; expected one of "
                                         r"\['robot', 'absolute'\]"):
        PolicyLoadConfig(**load, action_mode='delta')
    with pytest.raises(ValueError, match=r"Parameter 'asset_id' is ' '; expected None"):
        PolicyLoadConfig(**{**load, 'asset_id': ' '})
