"""
The π0 policy facade: checkpoint + embodiment adapter → robot-unit action chunks (no rclpy).

Axis letters: T action horizon, A model action width, U unified width, F robot command dims,
C camera slots, L prompt tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
import gc
import logging
from pathlib import Path
import threading
import time
from types import MappingProxyType
from typing import Any

import embodiment_adapters
from embodiment_adapters import EmbodimentAdapter, unified
import numpy as np
from pi0_policy.engine import Pi0Engine
from pi0_policy.model import checkpoint
from pi0_policy.model.config import Pi0Config
from pi0_policy.model.pi0 import build_empty, init_random, Pi0Model
from pi0_policy.model.rtc import ChunkPrior, DEFAULT_MAX_GUIDANCE_WEIGHT, SCHEDULE_EXP, SCHEDULES
from pi0_policy.runtime import assets, transforms
from pi0_policy.runtime.executor_base import RTC_DELAY_KEY, RTC_LEFTOVER_KEY
from pi0_policy.runtime.pipeline import (
    ACTION_MODE_ABSOLUTE, ACTION_MODE_ROBOT, check_action_mode, ModelInputs, NOISE_KEY,
    Observation, Pi0Pipeline)
from pi0_policy.runtime.tokenizer import load_tokenizer, PromptTokenizer
import torch

_LOG = logging.getLogger(__name__)

# Accepted dtype names.
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16}
# Timing keys of PolicyResult.timing (milliseconds).
TIME_PREPROCESS = 'preprocess'
TIME_MODEL = 'model'
TIME_POSTPROCESS = 'postprocess'
TIME_TOTAL = 'total'
# Prefix of the model's own timing breakdown in PolicyResult.timing.
MODEL_TIMING_PREFIX = 'model.'
MS_PER_S = 1000.0
# Default number of flow-matching denoising steps (openpi's π0).
DEFAULT_NUM_STEPS = 10
# Seed of the example observation used by warmup().
WARMUP_SEED = 0


@dataclass(frozen=True)
class PolicyResult:
    """One inference: the action chunk in robot units and how it was made."""

    # (T, F) actions in robot order and units (positions in rad/m, base velocities).
    actions: np.ndarray
    # (T, U) actions in the unified layout, after unnormalize and delta→absolute.
    unified_actions: np.ndarray
    # Milliseconds: preprocess, model, postprocess, total (+ 'model.<part>' when available).
    timing: Mapping[str, float]
    # The cleaned prompt that was tokenized.
    prompt: str
    # (L,) int64 prompt tokens fed to the model.
    tokens: np.ndarray
    # Number of real prompt tokens before truncation.
    num_tokens: int
    # Whether the prompt was truncated to the model's token length.
    prompt_truncated: bool
    # (C,) bool, which camera slots held an image.
    image_masks: np.ndarray
    # Real-Time Chunking: the delay d the chunk was sampled with (guided by the previous
    # chunk's leftover, or inpainted for a delay-conditioned checkpoint); None without RTC.
    rtc_delay: int | None = None


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map a dtype name or torch dtype to a supported torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f'Unsupported dtype {dtype!r}; expected one of {sorted(DTYPES)}.')


def _resolve_adapter(embodiment: str | Path | EmbodimentAdapter) -> EmbodimentAdapter:
    """Return an adapter for a robot name / config path, or the adapter itself."""
    if isinstance(embodiment, (str, Path)):
        return embodiment_adapters.load_adapter(embodiment)
    if not isinstance(embodiment, EmbodimentAdapter):
        raise TypeError(
            f'embodiment must be a robot name, a robot config path or an EmbodimentAdapter, got '
            f'{type(embodiment).__name__}.')
    return embodiment


def _choose_asset_id(asset_id: str | None, adapter: EmbodimentAdapter) -> tuple[str | None, str]:
    """Return the norm-stats asset id to load (explicit, else the robot config's) and why."""
    if asset_id is not None:
        return asset_id, 'given explicitly'
    robot_asset = adapter.config.norm_stats_asset_id
    if robot_asset is not None:
        return robot_asset, f'norm_stats_asset_id of robot config {adapter.config.source}'
    return None, (f'none given and robot {adapter.name!r} names no norm_stats_asset_id: the only '
                  'asset of the checkpoint')


def tiny_config_for(adapter: EmbodimentAdapter) -> Pi0Config:
    """
    Return the tiny architecture sized for an adapter.

    Every π0 camera slot is kept and the state/action widths cover the adapter's unified width.
    """
    config = Pi0Config.tiny(num_cameras=len(unified.MODEL_IMAGE_KEYS))
    width = max(config.action_dim, int(adapter.unified_dim))
    return replace(config, action_dim=width, state_dim=max(config.state_dim, width))


class Pi0Policy:
    """
    Run π0 on one embodiment: observation dict in, robot-unit action chunk out.

    ``infer`` may be called from one worker thread while other threads read the attributes;
    calls are serialized by a lock. Errors in the observation raise ValueError.
    """

    def __init__(
        self,
        model: Pi0Model,
        config: Pi0Config,
        pipeline: Pi0Pipeline,
        *,
        device: torch.device,
        dtype: torch.dtype,
        num_steps: int = DEFAULT_NUM_STEPS,
        seed: int = 0,
        compile: bool = False,  # noqa: A002 (the name of the public option)
        checkpoint_info: checkpoint.CheckpointInfo | None = None,
        load_time_s: float = 0.0,
        checkpoint_warnings: tuple[str, ...] = (),
        rtc_schedule: str = SCHEDULE_EXP,
        rtc_max_guidance_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT,
    ) -> None:
        """
        Wrap a loaded model (use :meth:`from_checkpoint` to build one).

        Args:
            model: the π0 network, on ``device`` in eval mode.
            config: its architecture.
            pipeline: input/output transforms bound to the embodiment adapter.
            device: where the model runs.
            dtype: the model's compute dtype.
            num_steps: denoising steps per inference.
            seed: seed of the noise drawn when an observation carries none.
            compile: run the denoising step through torch.compile.
            checkpoint_info: what was loaded (None for the random tiny model).
            load_time_s: seconds spent building or loading.
            checkpoint_warnings: what the loader found suspicious (action statistics that
                contradict the robot config's action modes), already logged.
            rtc_schedule: RTC soft-mask schedule over the leftover (model.rtc.SCHEDULES).
            rtc_max_guidance_weight: RTC guidance clip beta (>= 0; 0 disables guidance).

        Raises:
            ValueError: num_steps is not positive, or a bad RTC setting.

        """
        if num_steps <= 0:
            raise ValueError(f'num_steps must be a positive step count, got {num_steps}.')
        if rtc_schedule not in SCHEDULES or not rtc_max_guidance_weight >= 0:
            raise ValueError(
                f'rtc_schedule must be one of {SCHEDULES} and rtc_max_guidance_weight >= 0, got '
                f'{rtc_schedule!r} and {rtc_max_guidance_weight!r}.')
        self.rtc_schedule = rtc_schedule
        self.rtc_max_guidance_weight = float(rtc_max_guidance_weight)
        self._model: Pi0Model | None = model
        # Fast inference built from the model (shares its weights).
        self._engine: Pi0Engine | None = Pi0Engine(model, compile=compile)
        self.config = config
        self.pipeline = pipeline
        self.adapter = pipeline.adapter
        self.tokenizer: PromptTokenizer = pipeline.tokenizer
        self.device = device
        self.dtype = dtype
        self.num_steps = int(num_steps)
        self.seed = int(seed)
        self.compile = bool(compile)
        # None for the random tiny model.
        self.checkpoint_info = checkpoint_info
        # Seconds spent building or loading the model, tokenizer and statistics.
        self.load_time_s = float(load_time_s)
        # Loader warnings (assets.check_action_statistics), for status reports.
        self.checkpoint_warnings = tuple(checkpoint_warnings)
        self._generator = torch.Generator(device='cpu').manual_seed(self.seed)
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None,
        embodiment: str | Path | EmbodimentAdapter,
        *,
        device: str | torch.device = 'cpu',
        dtype: str | torch.dtype = 'float32',
        num_steps: int = DEFAULT_NUM_STEPS,
        asset_id: str | None = None,
        tokenizer_path: str | Path | None = None,
        seed: int = 0,
        compile: bool = False,  # noqa: A002 (the name of the public option)
        action_mode: str = ACTION_MODE_ROBOT,
        default_prompt: str | None = None,
        rtc_schedule: str = SCHEDULE_EXP,
        rtc_max_guidance_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT,
    ) -> Pi0Policy:
        """
        Load a policy.

        Args:
            path: an openpi or LeRobot checkpoint folder; None builds the tiny randomly
                initialised model (tests, demo) with the fallback tokenizer and no norm stats.
            embodiment: robot name, robot config path, or an ``EmbodimentAdapter``.
            device: torch device.
            dtype: 'float32' or 'bfloat16'.
            num_steps: denoising steps per inference.
            asset_id: which ``assets/<id>/norm_stats.json`` to use; the id may be nested
                (openpi names assets by dataset repo id, e.g.
                ``lerobot/aloha_sim_transfer_cube_human``). None uses the robot config's
                ``norm_stats_asset_id``, and when that is None too, the only asset present.
            tokenizer_path: explicit tokenizer: a SentencePiece ``.model``, a Hugging Face
                ``tokenizer.json`` or its folder (default: found in the checkpoint).
            seed: seed of the random init (tiny model) and of the sampling noise.
            compile: run the denoising step through torch.compile (first call compiles).
            action_mode: how the checkpoint's actions relate to the state (pipeline
                ACTION_MODES): 'robot' applies the robot config's per-joint delta/absolute
                actions; 'absolute' applies no delta transform (checkpoints trained on
                absolute actions, e.g. openpi pi0_aloha_sim).
            default_prompt: instruction used when an observation's prompt is blank; None uses
                the checkpoint's (``"default_prompt"`` in its config.json, else the known
                openpi asset's, see ``runtime.assets``); without any, a blank prompt raises
                ``MissingInstructionError``. The tiny random model (``path`` None) defaults to
                the adapter's ``EXAMPLE_PROMPT``.
            rtc_schedule: RTC soft-mask schedule (see ``__init__``).
            rtc_max_guidance_weight: RTC guidance clip beta (see ``__init__``).

        Returns:
            The ready policy.

        Raises:
            ValueError: bad arguments (dtype, action_mode), a checkpoint without tokenizer,
                without norm stats, without the chosen asset id or with ambiguous stats, or a
                known openpi asset whose action semantics or rate the robot config contradicts
                (e.g. the 'droid' asset with a robot whose joints are not action: velocity).

        """
        adapter = _resolve_adapter(embodiment)
        torch_dtype = _resolve_dtype(dtype)
        torch_device = torch.device(device)
        check_action_mode(action_mode)
        start = time.perf_counter()
        info = None
        # (U,) the dims the pipeline will treat as deltas.
        delta_mask = adapter.delta_mask & (action_mode != ACTION_MODE_ABSOLUTE)
        warnings: list[str] = []
        if path is not None:
            # Fail on the statistics and the known checkpoint facts before the (slow) weights
            # are read.
            asset_id, reason = _choose_asset_id(asset_id, adapter)
            normalizer = transforms.Normalizer.from_checkpoint(path, asset_id)
            _LOG.info('Norm stats asset %r (%s): %s', normalizer.asset_id, reason,
                      normalizer.source)
            assets.check_known_asset(normalizer.asset_id, adapter, delta_mask)
            warnings = list(assets.check_action_statistics(normalizer, adapter, delta_mask))
            for warning in warnings:
                _LOG.warning('Checkpoint %s: %s', path, warning)
            if default_prompt is None:
                default_prompt, source = assets.read_default_prompt(path, normalizer.asset_id)
                _LOG.info('Default prompt %r (from %s).', default_prompt, source)
        if path is None:
            config = tiny_config_for(adapter)
            model = init_random(build_empty(config, device=torch_device, dtype=torch_dtype),
                                seed=seed)
            tokenizer = load_tokenizer(tokenizer_path=tokenizer_path,
                                       vocab_size=config.vlm.vocab_size,
                                       max_len=config.max_token_len)
            normalizer = transforms.Normalizer()
            _LOG.warning('Pi0Policy uses a RANDOM tiny model: actions are meaningless.')
            if default_prompt is None:
                # No checkpoint, no trained language: the robot's example prompt stands in.
                default_prompt = adapter.EXAMPLE_PROMPT
        else:
            model, config, info = checkpoint.load_pi0(path, torch_device, torch_dtype)
            tokenizer = load_tokenizer(tokenizer_path=tokenizer_path, checkpoint_dir=path,
                                       vocab_size=config.vlm.vocab_size,
                                       max_len=config.max_token_len)
        model.eval().requires_grad_(False)
        pipeline = Pi0Pipeline(
            adapter, tokenizer, normalizer, image_size=config.vision.image_size,
            num_cameras=config.num_cameras, state_dim=config.state_dim,
            action_dim=config.action_dim, action_mode=action_mode,
            default_prompt=default_prompt)
        if pipeline.unused_cameras:
            warnings.append(
                f'The model has {config.num_cameras} camera slot(s): the cameras '
                f'{list(pipeline.unused_cameras)} of robot {adapter.name!r} are not used.')
            _LOG.warning('Checkpoint %s: %s', path, warnings[-1])
        _LOG.info('Pi0Policy action_mode=%r: delta dims %s, velocity dims %s.', action_mode,
                  np.flatnonzero(pipeline.delta_mask).tolist(),
                  np.flatnonzero(pipeline.velocity_mask).tolist())
        return cls(model, config, pipeline, device=torch_device, dtype=torch_dtype,
                   num_steps=num_steps, seed=seed, compile=compile, checkpoint_info=info,
                   load_time_s=time.perf_counter() - start,
                   checkpoint_warnings=tuple(warnings), rtc_schedule=rtc_schedule,
                   rtc_max_guidance_weight=rtc_max_guidance_weight)

    @property
    def action_horizon(self) -> int:
        """Return the number of actions T per chunk."""
        return self.config.action_horizon

    @property
    def norm_stats_asset_id(self) -> str | None:
        """Return the asset id whose norm stats are used (None: identity, tiny model)."""
        return self.pipeline.normalizer.asset_id

    @property
    def default_prompt(self) -> str | None:
        """Return the instruction used when an observation's prompt is blank (None: error)."""
        return self.pipeline.default_prompt

    @property
    def action_mode(self) -> str:
        """Return the action mode ('robot' or 'absolute', pipeline ACTION_MODES)."""
        return self.pipeline.action_mode

    @property
    def is_closed(self) -> bool:
        """Return whether close() has released the model."""
        return self._model is None

    def infer(self, observation: Observation) -> PolicyResult:
        """
        Compute one action chunk.

        Args:
            observation: ``{'images': {camera: (H, W, 3) uint8}, 'state': (N,) robot order,
                'prompt': str}``, optionally ``'noise'``: (T, A) initial noise for determinism,
                and for Real-Time Chunking ``'rtc_leftover'``: (R, F) the previous chunk's
                unexecuted actions in robot units from this observation's time on, with
                ``'rtc_delay'``: the inference delay d in chunk steps (clamped to R).

        Returns:
            The chunk in robot units with timings.

        Raises:
            ValueError: invalid observation (missing required camera, wrong state length, NaN).
            RuntimeError: the policy was closed.

        """
        return self.infer_batch([observation])[0]

    def infer_batch(self, observations: Sequence[Observation]) -> list[PolicyResult]:
        """
        Compute one action chunk per observation in one batched model call (the server's path).

        A batch of one gives the numbers of ``infer``; noise is drawn per observation in order.
        Timings are those of the whole batch.

        Raises:
            ValueError: any observation is invalid (nothing is computed).
            RuntimeError: the policy was closed.

        """
        with self._lock:
            if self._model is None:
                raise RuntimeError(
                    'Pi0Policy was closed; create a new one with Pi0Policy.from_checkpoint().')
            start = time.perf_counter()
            inputs = [self.pipeline.prepare(observation) for observation in observations]
            noise = torch.cat([self._noise(o.get(NOISE_KEY)) for o in observations])
            priors = [self._prior(o, x) for o, x in zip(observations, inputs)]
            batch = self._to_batch(inputs)
            prepared = time.perf_counter()
            with torch.inference_mode():
                out = self._sample(batch, noise, priors)
                if self.device.type == 'cuda':
                    torch.cuda.synchronize(self.device)
            sampled = time.perf_counter()
            model_actions = out.float().cpu().numpy()  # (B, T, A)
            finished = [self.pipeline.finish(model_actions[i], x) for i, x in enumerate(inputs)]
            done = time.perf_counter()
            timing = {
                TIME_PREPROCESS: (prepared - start) * MS_PER_S,
                TIME_MODEL: (sampled - prepared) * MS_PER_S,
                TIME_POSTPROCESS: (done - sampled) * MS_PER_S,
                TIME_TOTAL: (done - start) * MS_PER_S,
            }
            timing.update(self._model_timing())
            return [PolicyResult(
                actions=actions, unified_actions=unified_actions,
                timing=MappingProxyType(dict(timing)), prompt=x.prompt.text,
                tokens=x.tokens, num_tokens=x.prompt.num_tokens,
                prompt_truncated=x.prompt.truncated, image_masks=x.image_masks,
                rtc_delay=None if prior is None else prior.delay)
                for x, prior, (unified_actions, actions) in zip(inputs, priors, finished)]

    def example_observation(self, seed: int = WARMUP_SEED) -> dict[str, Any]:
        """Return a valid random observation for this embodiment (adapter ``make_example``)."""
        example = self.adapter.make_example(np.random.default_rng(seed))
        state = self.adapter.state_from_joint_states(
            example['names'], example['positions'], example.get('base_velocity'))
        return {'images': example['images'], 'state': state, 'prompt': example['prompt']}

    def warmup(self) -> PolicyResult:
        """
        Run one inference on an example observation (allocations, kernels, compilation).

        Uses zero noise, so the seeded noise sequence of later calls is unchanged.
        """
        observation = self.example_observation()
        observation[NOISE_KEY] = np.zeros(
            (self.config.action_horizon, self.config.action_dim), np.float32)
        return self.infer(observation)

    def close(self) -> None:
        """Release the model and free cached accelerator memory; infer() then raises."""
        with self._lock:
            if self._model is None:
                return
            self._model = None
            self._engine = None
        gc.collect()
        if self.device.type == 'cuda' and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _noise(self, noise: Any) -> torch.Tensor:
        """Return (1, T, A) initial noise: the given array or a draw from the seeded generator."""
        shape = (self.config.action_horizon, self.config.action_dim)
        if noise is None:
            drawn = torch.randn((1,) + shape, generator=self._generator, dtype=torch.float32)
            return drawn.to(self.device)
        array = np.asarray(noise, dtype=np.float32)
        if array.shape not in (shape, (1,) + shape) or not np.isfinite(array).all():
            raise ValueError(
                f'observation[{NOISE_KEY!r}] must be finite with shape {shape} (T, A), got '
                f'shape {array.shape}; omit it to draw seeded noise.')
        return torch.from_numpy(array.reshape((1,) + shape)).to(self.device)

    def _sample(self, batch: dict[str, torch.Tensor], noise: torch.Tensor,
                priors: Sequence[ChunkPrior | None]) -> torch.Tensor:
        """Sample (B, T, A): one batched call, or one call per observation with RTC priors."""
        keys = ('images', 'image_masks', 'tokens', 'token_masks', 'state')
        if all(prior is None for prior in priors):
            return self._engine.sample_actions(*(batch[k] for k in keys), noise=noise,
                                               num_steps=self.num_steps)
        return torch.cat([self._engine.sample_actions(
            *(batch[k][i:i + 1] for k in keys), noise=noise[i:i + 1], num_steps=self.num_steps,
            prior=prior) for i, prior in enumerate(priors)])

    def _prior(self, observation: Observation, inputs: ModelInputs) -> ChunkPrior | None:
        """Return the RTC prior from the observation's leftover in model space, or None."""
        leftover = observation.get(RTC_LEFTOVER_KEY)
        if leftover is None:
            return None
        horizon, dof = self.config.action_horizon, int(self.adapter.dof)
        array = np.asarray(leftover, dtype=np.float64)
        if (array.ndim != 2 or not 1 <= array.shape[0] <= horizon or array.shape[1] != dof
                or not np.isfinite(array).all()):
            raise ValueError(
                f'observation[{RTC_LEFTOVER_KEY!r}] must be finite (R, {dof}) robot actions with '
                f'1 <= R <= {horizon}, got shape {array.shape}; omit it to sample without RTC.')
        delay = observation.get(RTC_DELAY_KEY, 0)
        if isinstance(delay, bool) or not isinstance(delay, (int, np.integer)) or delay < 0:
            raise ValueError(
                f'observation[{RTC_DELAY_KEY!r}] must be a non-negative number of chunk steps, '
                f'got {delay!r}.')
        # Never freeze more than what is left of the previous chunk (d <= s <= H - d).
        delay = min(int(delay), array.shape[0])
        target = torch.from_numpy(self.pipeline.to_model_actions(array, inputs)).to(self.device)
        return ChunkPrior.from_leftover(target, delay=delay, horizon=horizon,
                                        schedule=self.rtc_schedule,
                                        max_weight=self.rtc_max_guidance_weight)

    def _to_batch(self, inputs: Sequence[ModelInputs]) -> dict[str, torch.Tensor]:
        """Stack the model inputs along a batch axis and move them to the device."""
        fields = ('images', 'image_masks', 'tokens', 'token_masks', 'state')
        return {k: torch.from_numpy(np.stack([getattr(x, k) for x in inputs])).to(self.device)
                for k in fields}

    def _model_timing(self) -> dict[str, float]:
        """Return the model's own breakdown (ms), if it records one."""
        parts = getattr(self._model, 'last_timing', None)
        if not isinstance(parts, Mapping):
            return {}
        return {MODEL_TIMING_PREFIX + str(k): float(v) for k, v in parts.items()}
