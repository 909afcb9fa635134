"""
Architecture configuration of π0: SigLIP vision tower, Gemma VLM, Gemma action expert, head sizes.

Every size used by the model code comes from these frozen dataclasses; nothing is hard-coded in
the modules. Named variants follow the openpi/lerobot tables (``shared/docs/pi0_model_spec.md``
§1).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

# Format tag of the shared parity fixtures (``config.json["format"]``).
FIXTURE_FORMAT = 'pi0-parity-fixture v1'
# PaliGemma SentencePiece vocabulary size (token-embedding rows of the full model).
PALIGEMMA_VOCAB_SIZE = 257152
# Epsilon of the Gemma RMSNorm and of the SigLIP LayerNorms.
NORM_EPS = 1e-6
# RoPE base (max wavelength) of Gemma.
ROPE_BASE = 10000.0
# Sinusoidal flow-time embedding periods.
TIME_MIN_PERIOD = 4e-3
TIME_MAX_PERIOD = 4.0
# config.json flag of a checkpoint trained with training-time RTC (Pi0Config.delay_conditioned).
DELAY_CONDITIONED_KEY = 'delay_conditioned'


def _check_positive(owner: str, **values: int) -> None:
    """Raise ValueError if any given integer field is not positive."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(
                f'{owner}.{name} must be a positive integer, got {value!r}; '
                'fix the architecture config.')


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """Size of one Gemma expert (the PaliGemma LLM or the action expert)."""

    # Hidden width D.
    width: int
    # Number of transformer blocks.
    depth: int
    # Hidden width of the GeGLU MLP.
    mlp_dim: int
    # Number of query heads N.
    num_heads: int
    # Number of key/value heads K (1 = multi-query attention); N must be a multiple of K.
    num_kv_heads: int
    # Width of one attention head.
    head_dim: int
    # Rows of the token-embedding table; 0 for an expert without one (the action expert).
    vocab_size: int = 0

    def __post_init__(self) -> None:
        """Validate the sizes."""
        _check_positive('GemmaConfig', width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
                        num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                        head_dim=self.head_dim)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f'GemmaConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads '
                f'({self.num_kv_heads}); choose sizes compatible with grouped-query attention.')
        if self.head_dim % 2:
            raise ValueError(f'GemmaConfig.head_dim must be even for RoPE, got {self.head_dim}.')
        if self.vocab_size < 0:
            raise ValueError(f'GemmaConfig.vocab_size must be >= 0, got {self.vocab_size}.')

    @classmethod
    def gemma_2b(cls, vocab_size: int = PALIGEMMA_VOCAB_SIZE) -> GemmaConfig:
        """Return the PaliGemma Gemma-2B language model (the VLM expert)."""
        return cls(width=2048, depth=18, mlp_dim=16384, num_heads=8, num_kv_heads=1,
                   head_dim=256, vocab_size=vocab_size)

    @classmethod
    def gemma_300m(cls) -> GemmaConfig:
        """Return the ~300M-parameter Gemma action expert."""
        return cls(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1,
                   head_dim=256, vocab_size=0)

    @classmethod
    def from_variant(cls, name: str, vocab_size: int = 0) -> GemmaConfig:
        """
        Return a named variant ('gemma_2b' or 'gemma_300m').

        Args:
            name: Variant name as used in openpi/lerobot configs.
            vocab_size: Embedding rows (only kept for the VLM; 0 = no table).

        Returns:
            The variant with the given vocabulary size.

        Raises:
            ValueError: If the name is unknown.
        """
        if name not in GEMMA_VARIANTS:
            raise ValueError(
                f'Unknown Gemma variant {name!r}; expected one of {sorted(GEMMA_VARIANTS)}.')
        return dataclasses.replace(GEMMA_VARIANTS[name](), vocab_size=vocab_size)


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """Size of the SigLIP vision tower (ViT, no pooling)."""

    # Hidden width of the ViT.
    width: int
    # Number of encoder blocks.
    depth: int
    # Hidden width of the MLP.
    mlp_dim: int
    # Number of attention heads (width must be a multiple).
    num_heads: int
    # Side of the square patches (pixels).
    patch_size: int = 14
    # Side of the square input image (pixels).
    image_size: int = 224

    def __post_init__(self) -> None:
        """Validate the sizes."""
        _check_positive('SiglipConfig', width=self.width, depth=self.depth,
                        mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                        patch_size=self.patch_size, image_size=self.image_size)
        if self.width % self.num_heads:
            raise ValueError(
                f'SiglipConfig.width ({self.width}) must be a multiple of num_heads '
                f'({self.num_heads}).')
        if self.image_size % self.patch_size:
            raise ValueError(
                f'SiglipConfig.image_size ({self.image_size}) must be a multiple of patch_size '
                f'({self.patch_size}).')

    @property
    def num_patches(self) -> int:
        """Return the number of image tokens per camera."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def siglip_so400m_14(cls) -> SiglipConfig:
        """Return SigLIP So400m/14 at 224x224 (256 tokens per image)."""
        return cls(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14,
                   image_size=224)


GEMMA_VARIANTS = {'gemma_2b': GemmaConfig.gemma_2b, 'gemma_300m': GemmaConfig.gemma_300m}


@dataclasses.dataclass(frozen=True)
class Pi0Config:
    """Complete π0 architecture."""

    # The PaliGemma language model (expert 0; owns the token embedding).
    vlm: GemmaConfig
    # The action expert (expert 1).
    expert: GemmaConfig
    # The vision tower; the projector maps vision.width -> vlm.width.
    vision: SiglipConfig
    # Width of the (padded) action vectors A.
    action_dim: int = 32
    # Width of the (padded) state vector.
    state_dim: int = 32
    # Number of actions per chunk H.
    action_horizon: int = 50
    # Number of prompt tokens L (right padded).
    max_token_len: int = 48
    # Number of camera slots C the pipeline feeds (the model itself accepts any count).
    num_cameras: int = 3
    # Trained with delay conditioning (training-time RTC): sampling with a previous chunk
    # hard-inpaints its first d actions instead of guiding (config.json key
    # ``DELAY_CONDITIONED_KEY``).
    delay_conditioned: bool = False

    def __post_init__(self) -> None:
        """Validate the cross-expert constraints of the shared attention."""
        _check_positive('Pi0Config', action_dim=self.action_dim, state_dim=self.state_dim,
                        action_horizon=self.action_horizon, max_token_len=self.max_token_len,
                        num_cameras=self.num_cameras)
        if not isinstance(self.delay_conditioned, bool):
            raise ValueError(
                f'Pi0Config.{DELAY_CONDITIONED_KEY} must be true or false, got '
                f'{self.delay_conditioned!r}.')
        for field in ('depth', 'num_heads', 'num_kv_heads', 'head_dim'):
            a, b = getattr(self.vlm, field), getattr(self.expert, field)
            if a != b:
                raise ValueError(
                    f'The VLM and the action expert share every attention layer, so their '
                    f'{field} must agree; got vlm.{field}={a}, expert.{field}={b}.')
        if self.vlm.vocab_size <= 0:
            raise ValueError(
                f'vlm.vocab_size must be positive (the VLM owns the token embedding), '
                f'got {self.vlm.vocab_size}.')
        if self.expert.width % 2:
            raise ValueError(
                f'expert.width must be even (sin|cos time embedding), got {self.expert.width}.')

    @property
    def tokens_per_camera(self) -> int:
        """Return the number of image tokens per camera."""
        return self.vision.num_patches

    @classmethod
    def full(cls, num_cameras: int = 3) -> Pi0Config:
        """Return the published π0: SigLIP So400m/14 + gemma_2b + gemma_300m."""
        return cls(vlm=GemmaConfig.gemma_2b(), expert=GemmaConfig.gemma_300m(),
                   vision=SiglipConfig.siglip_so400m_14(), action_dim=32, state_dim=32,
                   action_horizon=50, max_token_len=48, num_cameras=num_cameras)

    @classmethod
    def tiny(cls, num_cameras: int = 2, vocab_size: int = 8192) -> Pi0Config:
        """Return a tiny architecture like the parity fixtures (fast tests, demos)."""
        return cls(
            vlm=GemmaConfig(width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1,
                            head_dim=16, vocab_size=vocab_size),
            expert=GemmaConfig(width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1,
                               head_dim=16),
            vision=SiglipConfig(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=14,
                                image_size=224),
            action_dim=32, state_dim=32, action_horizon=50, max_token_len=48,
            num_cameras=num_cameras)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pi0Config:
        """
        Build the config from a fixture-style dict with explicit 'vlm', 'expert', 'vision'.

        Args:
            data: Mapping with 'vlm', 'expert', 'vision' sub-dicts (field names as in
                the dataclasses) and optional top-level sizes (action_dim, state_dim,
                action_horizon, max_token_len, num_cameras).

        Returns:
            The validated config.

        Raises:
            ValueError: If a section or field is missing or invalid.
        """
        try:
            vlm = GemmaConfig(**_pick(GemmaConfig, data['vlm']))
            expert = GemmaConfig(**_pick(GemmaConfig, {**data['expert'], 'vocab_size': 0}))
            vision = SiglipConfig(**_pick(SiglipConfig, data['vision']))
        except (KeyError, TypeError) as e:
            raise ValueError(
                f'Architecture dict lacks section or field {e}; expected sections vlm, expert, '
                'vision with the fields of GemmaConfig / SiglipConfig.') from e
        top = {k: data[k] for k in ('action_dim', 'state_dim', 'action_horizon', 'max_token_len',
                                    'num_cameras', DELAY_CONDITIONED_KEY) if k in data}
        return cls(vlm=vlm, expert=expert, vision=vision, **top)

    @classmethod
    def from_fixture_json(cls, path: str | pathlib.Path) -> Pi0Config:
        """
        Read the architecture from a parity fixture's ``config.json``.

        Args:
            path: The ``config.json`` file or the fixture directory holding it.

        Returns:
            The architecture described by the fixture.

        Raises:
            ValueError: If the file is not a "pi0-parity-fixture v1" config.
        """
        data = read_fixture_json(path)
        return cls.from_dict(data)


def read_fixture_json(path: str | pathlib.Path) -> dict[str, Any]:
    """
    Read a parity fixture's ``config.json`` and check its format.

    Args:
        path: The ``config.json`` file or the fixture directory holding it.

    Returns:
        The parsed config.

    Raises:
        ValueError: If it is unreadable or not a "pi0-parity-fixture v1" config.
    """
    path = pathlib.Path(path)
    if path.suffix != '.json':  # a fixture directory
        path = path / 'config.json'
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f'Cannot read {path}: {e}. Pass a parity fixture directory.') from e
    if not isinstance(data, dict) or data.get('format') != FIXTURE_FORMAT:
        got = data.get('format') if isinstance(data, dict) else type(data).__name__
        raise ValueError(f'{path}: unknown fixture format {got!r}, expected '
                         f'{FIXTURE_FORMAT!r}; pass a parity fixture directory.')
    return data


def _pick(kind: type, data: dict[str, Any]) -> dict[str, Any]:
    """Keep only the dataclass fields of ``kind`` from ``data``."""
    names = {f.name for f in dataclasses.fields(kind)}
    return {k: v for k, v in data.items() if k in names}
