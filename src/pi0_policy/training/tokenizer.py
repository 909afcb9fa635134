"""
Train a SentencePiece prompt tokenizer for a π0 trained from scratch.

A checkpoint needs a real SentencePiece model next to its weights (the node refuses a trained
checkpoint without one). When no PaliGemma tokenizer is at hand and the model is new, a small
model is trained on the dataset's task texts with PaliGemma's special ids (pad 0, eos 1, bos 2,
unk 3) and byte fallback, so any prompt still encodes.
"""

from __future__ import annotations

from collections.abc import Sequence
import io
import pathlib

import sentencepiece as spm

# File name the runtime looks for in a checkpoint folder.
TOKENIZER_FILE = 'tokenizer.model'
# Upper bound of the vocabulary trained (pieces beyond what the texts need are not made).
MAX_PIECES = 512
# Copies of the texts fed to the trainer (it needs a few sentences).
REPEATS = 20


def train_tokenizer(texts: Sequence[str], path: pathlib.Path, *, vocab_size: int) -> int:
    """
    Train and write a SentencePiece model; return its number of pieces.

    Raises:
        ValueError: When there is no text or the model would not fit the vocabulary.
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError('No task text to train a tokenizer on; the dataset has no tasks.')
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts) * REPEATS), model_writer=model,
        vocab_size=min(MAX_PIECES, vocab_size), model_type='unigram', byte_fallback=True,
        hard_vocab_limit=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        normalization_rule_name='identity', character_coverage=1.0, minloglevel=2)
    pieces = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    if pieces > vocab_size:
        raise ValueError(f'The trained tokenizer has {pieces} pieces but the model embeds only '
                         f'{vocab_size}; use a larger vocabulary.')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return pieces
