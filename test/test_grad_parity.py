"""Gradient parity: the mean training loss and every parameter's gradient match the fixtures."""

import json

from conftest import PARITY_FIXTURES
from pi0_policy.cli import EXIT_MISMATCH, GRADS_CHECK, LOSS_MEAN_CHECK, main, run_grad_parity
import pytest
from safetensors.torch import load_file, save_file
import torch

torch.set_num_threads(1)

FIXTURES = [PARITY_FIXTURES / 'public_openpi', PARITY_FIXTURES / 'public_lerobot']
# Relative change applied to one reference gradient in the negative test (far above grad_rel).
PERTURBATION = 1e-3


@pytest.mark.parametrize('fixture', FIXTURES, ids=lambda p: p.name)
def test_gradients_match_fixture(fixture):
    """Mean loss and every gradient tensor are within the fixture's tolerances."""
    checks = {c.name: c for c in run_grad_parity(fixture)}
    assert set(checks) == {LOSS_MEAN_CHECK, GRADS_CHECK}
    assert all(c.passed for c in checks.values()), checks


def test_parity_command_reports_gradients(capsys):
    """``pi0-policy parity`` prints the gradient checks of fixtures that have them."""
    assert main(['parity', *map(str, FIXTURES)]) == 0
    out = capsys.readouterr().out
    assert out.count(f'{GRADS_CHECK} ') == len(FIXTURES)
    assert out.count(f'{LOSS_MEAN_CHECK} ') == len(FIXTURES)


def test_perturbed_gradient_fails(tmp_path, capsys):
    """A reference gradient off by 1e-3 (relative) in one tensor fails the check (exit 1)."""
    src = FIXTURES[0]
    dst = tmp_path / 'fx'
    dst.mkdir()
    for name in ('model.safetensors', 'io.safetensors'):
        (dst / name).symlink_to(src / name)
    (dst / 'config.json').write_text((src / 'config.json').read_text())
    grads = load_file(str(src / 'grads.safetensors'))
    key = 'action_out_proj.weight'
    grads[key] = grads[key] * (1 + PERTURBATION)
    save_file(grads, str(dst / 'grads.safetensors'))
    checks = {c.name: c for c in run_grad_parity(dst)}
    assert not checks[GRADS_CHECK].passed and checks[LOSS_MEAN_CHECK].passed
    assert main(['parity', str(dst)]) == EXIT_MISMATCH
    assert f'{GRADS_CHECK} ' in capsys.readouterr().out
    data = json.loads((src / 'config.json').read_text())
    del data['tolerances']['grad_rel']
    (dst / 'config.json').write_text(json.dumps(data))
    with pytest.raises(ValueError, match='grad_rel'):
        run_grad_parity(dst)
