"""
Load π0 weights from safetensors in the openpi PyTorch or the LeRobot layout.

openpi layout: ``<dir>/model.safetensors`` with openpi's module names (the token embedding stored
only as ``paligemma_with_expert.paligemma.lm_head.weight``), ``<dir>/config.json``
(``paligemma_variant``, ``action_expert_variant``, ``action_dim``, ``action_horizon``, ...) and
``<dir>/assets/<asset_id>/norm_stats.json``. LeRobot layout: the same keys prefixed with ``model.``
(both ``embed_tokens`` and ``lm_head`` present). The layout is detected from the key names.

The module is built on the meta device, then allocated (uninitialised) on the target device, and
every tensor is copied in from the file in row chunks of at most ``LOAD_CHUNK_ELEMENTS``
(``safe_open`` slices), cast to its policy dtype on the way, so two copies of the model never
exist and the transient memory is one chunk. The unused LM heads are skipped without being read.
Only safetensors are read; never pickle.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any

from pi0_policy.model.config import DELAY_CONDITIONED_KEY, FIXTURE_FORMAT, GemmaConfig
from pi0_policy.model.config import Pi0Config, SiglipConfig
from pi0_policy.model.pi0 import check_dtype, Pi0Model
from safetensors import safe_open
from safetensors.torch import save_file
import torch

WEIGHTS_FILE = 'model.safetensors'
CONFIG_FILE = 'config.json'
ASSETS_DIR = 'assets'
NORM_STATS_FILE = 'norm_stats.json'
LAYOUT_OPENPI = 'openpi'
LAYOUT_LEROBOT = 'lerobot'
LEROBOT_PREFIX = 'model.'
# openpi key prefix -> this package's module prefix.
PREFIX_MAP = (
    ('paligemma_with_expert.paligemma.model.vision_tower.vision_model.', 'vision.'),
    ('paligemma_with_expert.paligemma.model.multi_modal_projector.linear.', 'projector.'),
    ('paligemma_with_expert.paligemma.model.language_model.', 'vlm.'),
    ('paligemma_with_expert.gemma_expert.model.', 'expert.'),
)
HEAD_PREFIXES = ('state_proj.', 'action_in_proj.', 'action_time_mlp_in.', 'action_time_mlp_out.',
                 'action_out_proj.')
# The PaliGemma LM head: tied to the token embedding in openpi (the only copy in its files).
VLM_LM_HEAD = 'paligemma_with_expert.paligemma.lm_head.weight'
EMBED_KEY = 'vlm.embed_tokens.weight'
# Keys that exist in the peers' files but are not used by π0; never read.
IGNORED_KEYS = frozenset({'paligemma_with_expert.gemma_expert.lm_head.weight', VLM_LM_HEAD})
# Non-weight buffers HF may serialise.
IGNORED_PATTERNS = (re.compile(r'.*\.position_ids$'),)
# Largest slice read from the file at once while loading (elements).
LOAD_CHUNK_ELEMENTS = 1 << 24


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What was loaded and from where."""

    # 'openpi' or 'lerobot'.
    layout: str
    # The safetensors file read.
    weights_path: pathlib.Path
    # Where the architecture came from: 'argument', 'fixture', 'config.json' or 'shapes'.
    config_source: str
    # File keys present but deliberately not loaded.
    ignored_keys: tuple[str, ...]
    # Every ``assets/<id>/norm_stats.json`` next to the weights (ids may be nested), sorted.
    norm_stats_paths: tuple[pathlib.Path, ...]


def resolve_weights(path: str | pathlib.Path) -> pathlib.Path:
    """
    Return the safetensors file of a checkpoint directory or file.

    Args:
        path: A directory holding ``model.safetensors`` or the file itself.

    Returns:
        The file path.

    Raises:
        ValueError: If no safetensors file is there (pickle checkpoints are refused).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ValueError(f'No weights file or checkpoint directory at {path}; expected a '
                         f'directory holding {WEIGHTS_FILE} or the file itself.')
    file = path / WEIGHTS_FILE if path.is_dir() else path
    if file.suffix != '.safetensors':
        raise ValueError(
            f'{file} is not a .safetensors file; only safetensors checkpoints are loaded '
            '(never pickle). Convert the checkpoint to safetensors first.')
    if not file.is_file():
        raise ValueError(f'No weights file at {file}; expected <checkpoint>/{WEIGHTS_FILE}.')
    return file


def detect_layout(keys: list[str]) -> str:
    """
    Tell the openpi layout from the LeRobot layout by the key names.

    Args:
        keys: All tensor names in the file.

    Returns:
        'openpi' or 'lerobot'.

    Raises:
        ValueError: If the keys are mixed or match neither layout.
    """
    prefixed = [k for k in keys if k.startswith(LEROBOT_PREFIX)]
    if keys and len(prefixed) == len(keys):
        return LAYOUT_LEROBOT
    if not prefixed and any(k.startswith('paligemma_with_expert.') for k in keys):
        return LAYOUT_OPENPI
    raise ValueError(
        f'Cannot tell the checkpoint layout: {len(prefixed)} of {len(keys)} keys start with '
        f'{LEROBOT_PREFIX!r} (e.g. {keys[:3]}); expected all (lerobot) or none with '
        '"paligemma_with_expert." keys (openpi).')


def map_key(key: str) -> str | None:
    """Map an openpi key to this package's parameter name; None if it is not a π0 weight."""
    for src, dst in PREFIX_MAP:
        if key.startswith(src):
            return dst + key[len(src):]
    if key.startswith(HEAD_PREFIXES):
        return key
    return None


def openpi_key(name: str) -> str:
    """Map this package's parameter name to the openpi key (inverse of ``map_key``)."""
    if name == EMBED_KEY:
        return VLM_LM_HEAD
    for src, dst in PREFIX_MAP:
        if name.startswith(dst):
            return src + name[len(dst):]
    return name


def save_pi0(model: Pi0Model, path: str | pathlib.Path, layout: str = LAYOUT_OPENPI) -> None:
    """
    Write a checkpoint directory (``model.safetensors`` + ``config.json`` with the architecture).

    The openpi layout stores the token embedding only as the LM head (as openpi's files do); the
    lerobot layout stores ``embed_tokens`` under ``model.``. Unused LM heads are not written.

    Args:
        model: The model to save.
        path: Target directory (created).
        layout: 'openpi' or 'lerobot'.

    Raises:
        ValueError: On an unknown layout.
    """
    if layout not in (LAYOUT_OPENPI, LAYOUT_LEROBOT):
        raise ValueError(
            f'layout must be {LAYOUT_OPENPI!r} or {LAYOUT_LEROBOT!r}, got {layout!r}.')
    root = pathlib.Path(path)
    root.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, param in model.named_parameters():
        key = openpi_key(name)
        if layout == LAYOUT_LEROBOT:
            key = LEROBOT_PREFIX + (key if name != EMBED_KEY else
                                    PREFIX_MAP[2][0] + name[len(PREFIX_MAP[2][1]):])
        # clone: fused parameters share storage, which safetensors refuses to save.
        tensors[key] = param.detach().cpu().clone()
    save_file(tensors, str(root / WEIGHTS_FILE))
    (root / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(model.config), indent=2))


def load_pi0(path: str | pathlib.Path, device: torch.device | str = 'cpu',
             dtype: torch.dtype = torch.float32, *,
             config: Pi0Config | None = None) -> tuple[Pi0Model, Pi0Config, CheckpointInfo]:
    """
    Load a π0 checkpoint (openpi or LeRobot layout, auto-detected).

    Args:
        path: Checkpoint directory (or its ``model.safetensors``).
        device: Target device.
        dtype: Compute dtype, torch.float32 or torch.bfloat16 (see the dtype policy in pi0.py).
        config: Architecture; by default read from ``config.json`` (a parity fixture, explicit
            vlm/expert/vision sections or openpi/lerobot variant names) or inferred from shapes.

    Returns:
        (model in eval mode without gradients, its config, load info).

    Raises:
        ValueError: On a missing file, unknown layout, missing/unexpected keys or bad shapes.
    """
    check_dtype(dtype)
    file = resolve_weights(path)
    root = file.parent
    with safe_open(str(file), framework='pt', device='cpu') as f:
        keys = list(f.keys())
        layout = detect_layout(keys)
        strip = len(LEROBOT_PREFIX) if layout == LAYOUT_LEROBOT else 0
        by_name: dict[str, str] = {}
        unexpected, ignored = [], []
        for key in keys:
            bare = key[strip:]
            name = map_key(bare)
            if name is not None:
                by_name[name] = key
            elif bare in IGNORED_KEYS or any(p.match(bare) for p in IGNORED_PATTERNS):
                ignored.append(key)
            else:
                unexpected.append(key)
        lm_head = LEROBOT_PREFIX * bool(strip) + VLM_LM_HEAD
        if EMBED_KEY not in by_name and lm_head in keys:
            # openpi stores the tied token embedding only under the LM head's name.
            by_name[EMBED_KEY] = lm_head
            ignored.remove(lm_head)
        shapes = {name: tuple(f.get_slice(key).get_shape()) for name, key in by_name.items()}
        config, source = _resolve_config(root, config, shapes, layout)
        with torch.device('meta'):
            model = Pi0Model(config)
        model.set_dtype(dtype)
        params = dict(model.named_parameters())
        missing = sorted(set(params) - set(by_name))
        if missing or unexpected:
            raise ValueError(
                f'{file} ({layout} layout) does not match the π0 architecture: missing keys '
                f'{missing}, unexpected keys {sorted(unexpected)}. Check that the checkpoint is '
                'a π0 (not π0.5/π0-FAST) checkpoint and that its config matches the weights.')
        for name, param in params.items():
            if shapes[name] != tuple(param.shape):
                raise ValueError(
                    f'{by_name[name]} has shape {shapes[name]} but the architecture '
                    f'({source}) expects {tuple(param.shape)}; fix config.json or pass config.')
        model = model.to_empty(device=device).requires_grad_(False)
        with torch.no_grad():
            for name, param in model.named_parameters():
                _read_into(f, by_name[name], param)
    info = CheckpointInfo(layout=layout, weights_path=file, config_source=source,
                          ignored_keys=tuple(sorted(ignored)),
                          norm_stats_paths=tuple(sorted(root.glob(
                              f'{ASSETS_DIR}/**/{NORM_STATS_FILE}'))))
    return model.eval(), config, info


def _read_into(f: Any, key: str, param: torch.Tensor) -> None:
    """Copy file tensor ``key`` into ``param`` (casting), in row chunks."""
    if param.dim() == 0 or param.numel() <= LOAD_CHUNK_ELEMENTS:
        param.copy_(f.get_tensor(key))
        return
    file_slice = f.get_slice(key)
    rows = max(1, LOAD_CHUNK_ELEMENTS // param[0].numel())
    for start in range(0, param.shape[0], rows):
        param[start:start + rows].copy_(file_slice[start:start + rows])


def _resolve_config(root: pathlib.Path, config: Pi0Config | None,
                    shapes: dict[str, tuple[int, ...]], layout: str) -> tuple[Pi0Config, str]:
    """Pick the architecture: argument, then config.json, then the tensor shapes."""
    if config is not None:
        return config, 'argument'
    file = root / CONFIG_FILE
    if not file.is_file():
        return config_from_shapes(shapes), 'shapes'
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f'Cannot read {file}: {e}; fix or remove it.') from e
    if data.get('format') == FIXTURE_FORMAT:
        declared = data.get('checkpoint_format')
        if declared != layout:
            raise ValueError(
                f'{file} declares checkpoint_format {declared!r} but the weights are in the '
                f'{layout!r} layout.')
        return Pi0Config.from_dict(data), 'fixture'
    if all(k in data for k in ('vlm', 'expert', 'vision')):
        return Pi0Config.from_dict(data), CONFIG_FILE
    if 'paligemma_variant' in data:
        return _config_from_variants(data, shapes), CONFIG_FILE
    return config_from_shapes(shapes), 'shapes'


def _config_from_variants(data: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> Pi0Config:
    """Build the config from openpi ({action_dim, ...}) or lerobot ({max_action_dim, ...}) keys."""
    inferred = config_from_shapes(shapes)
    vocab = shapes[EMBED_KEY][0] if EMBED_KEY in shapes else inferred.vlm.vocab_size
    action_dim = data.get('max_action_dim', data.get('action_dim', inferred.action_dim))
    return Pi0Config(
        vlm=GemmaConfig.from_variant(data['paligemma_variant'], vocab_size=vocab),
        expert=GemmaConfig.from_variant(data.get('action_expert_variant', 'gemma_300m')),
        vision=inferred.vision,
        action_dim=action_dim,
        state_dim=data.get('max_state_dim', inferred.state_dim),
        action_horizon=data.get('chunk_size', data.get('action_horizon', 50)),
        max_token_len=data.get('tokenizer_max_length', data.get('max_token_len', 48)),
        delay_conditioned=data.get(DELAY_CONDITIONED_KEY, False))


def config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> Pi0Config:
    """
    Infer the architecture from tensor shapes (keys in this package's naming).

    Head counts are not visible in shapes: a Gemma expert whose sizes match a named variant
    takes its head layout, otherwise one kv head (MQA, as in π0) is assumed; SigLIP must be
    So400m-wide. The horizon defaults to 50. Pass ``config`` or a config.json otherwise.

    Args:
        shapes: Parameter name -> shape.

    Returns:
        The inferred config.

    Raises:
        ValueError: If a required tensor is absent or the SigLIP heads cannot be inferred.
    """
    try:
        vlm = _gemma_from_shapes(shapes, 'vlm', shapes[EMBED_KEY][0])
        expert = _gemma_from_shapes(shapes, 'expert', 0)
        conv = shapes['vision.embeddings.patch_embedding.weight']
        num_patches = shapes['vision.embeddings.position_embedding.weight'][0]
        width, patch = conv[0], conv[2]
        so400m = SiglipConfig.siglip_so400m_14()
        if width != so400m.width:
            raise ValueError(
                f'Cannot infer the SigLIP head count for width {width} from shapes; provide a '
                'config.json with a "vision" section or pass config.')
        vision = SiglipConfig(
            width=width, depth=_depth(shapes, 'vision.encoder.layers.'),
            mlp_dim=shapes['vision.encoder.layers.0.mlp.fc1.weight'][0],
            num_heads=so400m.num_heads, patch_size=patch,
            image_size=patch * round(num_patches ** 0.5))
        return Pi0Config(vlm=vlm, expert=expert, vision=vision,
                         action_dim=shapes['action_in_proj.weight'][1],
                         state_dim=shapes['state_proj.weight'][1])
    except KeyError as e:
        raise ValueError(f'Cannot infer the architecture: tensor {e} is missing.') from e


def _depth(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    """Count layers ``prefix{i}.`` present."""
    ids = {int(k[len(prefix):].split('.')[0]) for k in shapes if k.startswith(prefix)}
    return len(ids)


def _gemma_from_shapes(shapes: dict[str, tuple[int, ...]], prefix: str,
                       vocab: int) -> GemmaConfig:
    """Infer one Gemma expert's sizes."""
    layer = f'{prefix}.layers.0.'
    q_rows, width = shapes[layer + 'self_attn.q_proj.weight']
    kv_rows = shapes[layer + 'self_attn.k_proj.weight'][0]
    depth = _depth(shapes, f'{prefix}.layers.')
    mlp_dim = shapes[layer + 'mlp.gate_proj.weight'][0]
    for make in (GemmaConfig.gemma_2b, GemmaConfig.gemma_300m):
        named = make()
        if (named.width, named.depth, named.mlp_dim, named.num_heads * named.head_dim,
                named.num_kv_heads * named.head_dim) == (width, depth, mlp_dim, q_rows, kv_rows):
            return dataclasses.replace(named, vocab_size=vocab)
    return GemmaConfig(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=q_rows // kv_rows,
                       num_kv_heads=1, head_dim=kv_rows, vocab_size=vocab)
