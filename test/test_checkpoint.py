"""Tests of checkpoint loading: layouts, key checks, dtype casting, config inference."""

import json
import shutil

from conftest import PARITY_FIXTURES
from pi0_policy.model import build_empty, init_random, load_pi0, Pi0Config, Pi0Model
from pi0_policy.model.checkpoint import config_from_shapes, detect_layout, save_pi0
import pytest
from safetensors.torch import load_file, save_file
import torch

torch.set_num_threads(1)

OPENPI_FIXTURE = PARITY_FIXTURES / 'public_openpi'
LEROBOT_FIXTURE = PARITY_FIXTURES / 'public_lerobot'
EMBED_OPENPI = 'paligemma_with_expert.paligemma.lm_head.weight'
EXPERT_LM_HEAD = 'paligemma_with_expert.gemma_expert.lm_head.weight'
EMBED_LEROBOT = 'model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight'


def tiny_model(seed: int = 0):
    """Return a small random model (tiny architecture, one SigLIP layer)."""
    cfg = Pi0Config.tiny(vocab_size=64)
    return init_random(build_empty(cfg), seed)


def test_fixture_layouts_are_detected_and_equal():
    """Both fixtures load to identical weights; the token embedding comes from lm_head."""
    a, cfg_a, info_a = load_pi0(OPENPI_FIXTURE)
    b, cfg_b, info_b = load_pi0(LEROBOT_FIXTURE)
    assert (info_a.layout, info_b.layout) == ('openpi', 'lerobot')
    assert info_a.config_source == 'fixture' and cfg_a == cfg_b
    assert info_a.ignored_keys == (EXPERT_LM_HEAD,)
    assert 'model.' + EMBED_OPENPI in info_b.ignored_keys
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name
    ref = load_file(str(OPENPI_FIXTURE / 'model.safetensors'))
    assert torch.equal(a.vlm.embed_tokens.weight, ref[EMBED_OPENPI])
    assert not any(p.requires_grad for p in a.parameters())


@pytest.mark.parametrize('layout', ['openpi', 'lerobot'])
def test_save_load_roundtrip_bf16(tmp_path, layout):
    """A saved model reloads in either layout; bf16 loading follows the dtype policy."""
    model = tiny_model()
    save_pi0(model, tmp_path, layout=layout)
    (tmp_path / 'assets' / 'robot').mkdir(parents=True)
    (tmp_path / 'assets' / 'robot' / 'norm_stats.json').write_text('{}')
    loaded, cfg, info = load_pi0(tmp_path, dtype=torch.bfloat16)
    assert info.layout == layout and info.config_source == 'config.json'
    assert cfg == model.config
    assert [p.name for p in info.norm_stats_paths] == ['norm_stats.json']
    q = loaded.vlm.layers[1].self_attn.q_proj.weight
    assert q.dtype == torch.bfloat16
    assert torch.equal(q, model.vlm.layers[1].self_attn.q_proj.weight.to(torch.bfloat16))
    assert loaded.action_time_mlp_in.weight.dtype == torch.float32
    assert loaded.expert.norm.weight.dtype == torch.float32


def test_missing_and_unexpected_keys_are_named(tmp_path):
    """A missing and an unexpected tensor are both named in the error."""
    tensors = load_file(str(OPENPI_FIXTURE / 'model.safetensors'))
    del tensors['state_proj.bias']
    tensors['paligemma_with_expert.extra.weight'] = torch.zeros(2)
    save_file(tensors, str(tmp_path / 'model.safetensors'))
    shutil.copy(OPENPI_FIXTURE / 'config.json', tmp_path / 'config.json')
    with pytest.raises(ValueError, match=r"missing keys \['state_proj.bias'\].*"
                                         r"unexpected keys \['paligemma_with_expert.extra"):
        load_pi0(tmp_path)


def test_declared_layout_mismatch(tmp_path):
    """A fixture whose declared layout disagrees with its keys is rejected."""
    shutil.copy(LEROBOT_FIXTURE / 'model.safetensors', tmp_path / 'model.safetensors')
    data = json.loads((OPENPI_FIXTURE / 'config.json').read_text())
    (tmp_path / 'config.json').write_text(json.dumps(data))
    with pytest.raises(ValueError, match="declares checkpoint_format 'openpi' but the weights "
                                         "are in the 'lerobot' layout"):
        load_pi0(tmp_path)


def test_shape_mismatch_and_pickle_refused(tmp_path):
    """Weights that do not fit the config, and non-safetensors files, are refused."""
    save_pi0(tiny_model(), tmp_path)
    other = Pi0Config.tiny(vocab_size=32)
    with pytest.raises(ValueError, match='has shape .* but the architecture'):
        load_pi0(tmp_path, config=other)
    (tmp_path / 'model.pt').write_bytes(b'')
    with pytest.raises(ValueError, match='only safetensors checkpoints are loaded'):
        load_pi0(tmp_path / 'model.pt')
    with pytest.raises(ValueError, match='No weights file'):
        load_pi0(tmp_path / 'nothing')


def test_detect_layout_errors():
    """Mixed or foreign keys are not guessed."""
    with pytest.raises(ValueError, match='Cannot tell the checkpoint layout'):
        detect_layout(['model.state_proj.weight', 'state_proj.weight'])
    with pytest.raises(ValueError, match='Cannot tell the checkpoint layout'):
        detect_layout(['encoder.weight'])


def test_config_from_full_shapes():
    """The full architecture is recovered from tensor shapes alone (meta tensors, no memory)."""
    full = Pi0Config.full()
    with torch.device('meta'):
        model = Pi0Model(full)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    inferred = config_from_shapes(shapes)
    assert inferred.vlm == full.vlm and inferred.expert == full.expert
    assert inferred.vision == full.vision and inferred.action_dim == full.action_dim


def test_config_from_shapes_needs_known_siglip(tmp_path):
    """Without a config, a non-So400m SigLIP cannot be inferred; the error says what to do."""
    save_pi0(tiny_model(), tmp_path)
    (tmp_path / 'config.json').unlink()
    with pytest.raises(ValueError, match='Cannot infer the SigLIP head count'):
        load_pi0(tmp_path)
    model, _, info = load_pi0(tmp_path, config=Pi0Config.tiny(vocab_size=64))
    assert info.config_source == 'argument'
