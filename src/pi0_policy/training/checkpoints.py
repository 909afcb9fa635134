"""
Training checkpoints: the openpi PyTorch layout the node loads, plus the state to resume.

``<out>/<step>/`` holds ``model.safetensors`` (openpi keys; the EMA weights when EMA is on, as
openpi serves them), ``config.json`` (architecture), ``assets/<asset_id>/norm_stats.json``,
``tokenizer.model`` and, for resuming, ``train_state.safetensors`` (raw weights, EMA, AdamW
moments) with ``train_state.json`` (step, settings). Only safetensors and JSON: never pickle.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

from pi0_policy.model.checkpoint import save_pi0
from pi0_policy.model.pi0 import Pi0Model
from pi0_policy.training.optim import Ema
from safetensors.torch import load_file, save_file
import torch

STATE_FILE = 'train_state.safetensors'
META_FILE = 'train_state.json'


def step_dirs(out: pathlib.Path) -> list[pathlib.Path]:
    """Return the complete checkpoint folders of a run, oldest first."""
    dirs = [p for p in out.glob('*') if p.is_dir() and p.name.isdigit()
            and (p / META_FILE).is_file()]
    return sorted(dirs, key=lambda p: int(p.name))


def save(step_dir: pathlib.Path, model: Pi0Model, optimizer: torch.optim.Optimizer,
         ema: Ema | None, meta: dict[str, Any]) -> None:
    """
    Write one checkpoint folder (the metadata file last: a folder without it is incomplete).

    Args:
        step_dir: ``<out>/<step>``; its assets and tokenizer are written by the caller first.
        model: The trained model (raw weights).
        optimizer: Its AdamW.
        ema: The EMA (its weights become ``model.safetensors``), or None.
        meta: JSON-serialisable step and settings.
    """
    step_dir.mkdir(parents=True, exist_ok=True)
    names = {p: n for n, p in model.named_parameters()}
    tensors = {f'param/{n}': p.detach().cpu().clone() for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group['params']:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f'adam/{names[p]}/{key}'] = torch.as_tensor(value).detach().cpu().clone()
    if ema is not None:
        tensors.update({f'ema/{n}': t.cpu().clone() for n, t in ema.shadow.items()})
    save_file(tensors, str(step_dir / STATE_FILE))
    if ema is None:
        save_pi0(model, step_dir)
    else:
        raw = {n: p.detach().clone() for n, p in model.named_parameters()}
        ema.copy_to(model)
        save_pi0(model, step_dir)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(raw[n])
    (step_dir / META_FILE).write_text(json.dumps(meta, indent=2))


def load_state(step_dir: pathlib.Path, model: Pi0Model, optimizer: torch.optim.Optimizer,
               ema: Ema | None) -> dict[str, Any]:
    """
    Restore raw weights, AdamW moments and EMA from a checkpoint folder; return its metadata.

    Raises:
        ValueError: When the folder lacks a tensor the run needs.
    """
    tensors = load_file(str(step_dir / STATE_FILE))
    params = dict(model.named_parameters())
    try:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(tensors[f'param/{n}'])
        for group in optimizer.param_groups:
            for p in group['params']:
                name = [n for n, q in params.items() if q is p][0]
                # AdamW keeps its step counter on the CPU unless capturable.
                state = {key.rsplit('/', 1)[1]: value if key.endswith('/step')
                         else value.to(p.device)
                         for key, value in tensors.items() if key.startswith(f'adam/{name}/')}
                if state:
                    optimizer.state[p] = state
        if ema is not None:
            for n in ema.shadow:
                ema.shadow[n].copy_(tensors[f'ema/{n}'])
    except KeyError as e:
        raise ValueError(f'{step_dir / STATE_FILE} lacks tensor {e}; it was written by a run '
                         'with another architecture or without EMA.') from e
    return json.loads((step_dir / META_FILE).read_text())


def prune(out: pathlib.Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoint folders (0 keeps all)."""
    if keep > 0:
        for old in step_dirs(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
