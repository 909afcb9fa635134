r"""
Turn a language instruction into π0 prompt tokens (openpi's PaliGemma prompt rule).

The rule (spec §6.2): strip the prompt, replace ``_`` and newlines by spaces, encode it with a BOS
token, append the separately encoded ``"\n"`` ("start of answer"), right-pad with 0 to
``max_len`` (48 for π0) with a boolean mask, and truncate longer prompts with a logged warning.

Three encoders implement the rule's text → ids step:

- :class:`SentencePieceEncoder`: the PaliGemma SentencePiece model read from a local file
  (``tokenizer.model`` / ``paligemma_tokenizer.model`` in a checkpoint folder or its ``assets/``),
  as openpi loads it.
- :class:`HuggingFaceEncoder`: a Hugging Face tokenizer folder (``tokenizer.json`` +
  ``tokenizer_config.json``, e.g. ``google/paligemma-3b-pt-224`` as LeRobot π0 checkpoints
  expect) read through ``transformers``; the same prompt rule gives the same ids as the
  SentencePiece model it was converted from.
- :class:`FallbackEncoder`: a deterministic word-hash encoder for the tiny randomly initialised
  model, which has no tokenizer file. Its ids mean nothing to a trained checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

_LOG = logging.getLogger(__name__)

# π0's prompt length in tokens (openpi PaligemmaTokenizer max_len).
DEFAULT_MAX_TOKEN_LEN = 48
# Gemma / PaliGemma special ids.
PAD_ID = 0
EOS_ID = 1
BOS_ID = 2
UNK_ID = 3
# The "start of answer" text appended after every prompt, encoded on its own.
ANSWER_START = '\n'
# Characters the prompt rule replaces by a space.
PROMPT_SPACE_CHARS = ('_', '\n')
# File names searched for, in this order, in a folder and then in its assets subfolder:
# SentencePiece models first (openpi's reference), then a Hugging Face tokenizer.json.
SENTENCEPIECE_FILE_NAMES = ('tokenizer.model', 'paligemma_tokenizer.model')
HF_TOKENIZER_FILE = 'tokenizer.json'
TOKENIZER_FILE_NAMES = SENTENCEPIECE_FILE_NAMES + (HF_TOKENIZER_FILE,)
ASSETS_DIR_NAME = 'assets'
# Fallback encoder: ids below this are reserved for the special tokens and the answer-start token.
FALLBACK_FIRST_WORD_ID = 5
FALLBACK_ANSWER_START_ID = 4
FALLBACK_HASH_BYTES = 8


class TextEncoder(Protocol):
    """Map text to token ids (the step of the prompt rule that depends on the vocabulary)."""

    # Human-readable description (file path or 'fallback').
    name: str
    # Number of ids the encoder can produce (all ids are < vocab_size).
    vocab_size: int

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        """Encode text to ids, with a leading BOS id when asked."""


class SentencePieceEncoder:
    """The PaliGemma SentencePiece model read from a local ``.model`` file."""

    def __init__(self, model_file: str | Path) -> None:
        """
        Load a SentencePiece model.

        Args:
            model_file: path of a SentencePiece ``.model`` file.

        Raises:
            ValueError: the file does not exist or is not a SentencePiece model.

        """
        import sentencepiece  # Imported here: the fallback path must not need it.

        path = Path(model_file)
        if not path.is_file():
            raise ValueError(
                f'Tokenizer file {str(path)!r} does not exist; expected a SentencePiece .model '
                'file (e.g. paligemma_tokenizer.model). Pass tokenizer_path=<file>.')
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise ValueError(
                f'Cannot read {str(path)!r} as a SentencePiece model ({e}); expected the '
                'PaliGemma tokenizer .model file.') from e
        self.name = str(path)
        self.vocab_size = int(self._sp.GetPieceSize())

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        """Encode text with the SentencePiece model."""
        return list(self._sp.Encode(text, out_type=int, add_bos=add_bos))


class HuggingFaceEncoder:
    """A Hugging Face tokenizer folder (``tokenizer.json``) read through ``transformers``."""

    def __init__(self, folder: str | Path) -> None:
        """
        Load a tokenizer folder offline (``AutoTokenizer``, local files only).

        Args:
            folder: a folder holding ``tokenizer.json`` (and usually ``tokenizer_config.json``),
                or the ``tokenizer.json`` file itself.

        Raises:
            ValueError: the folder does not hold a readable tokenizer, or it has no BOS token.

        """
        from transformers import AutoTokenizer  # Imported here: slow, and only this path needs it.

        path = Path(folder)
        folder = path.parent if path.is_file() else path
        if not (folder / HF_TOKENIZER_FILE).is_file():
            raise ValueError(
                f'{str(path)!r} holds no {HF_TOKENIZER_FILE}; expected a Hugging Face tokenizer '
                'folder (tokenizer.json + tokenizer_config.json, e.g. a download of '
                'google/paligemma-3b-pt-224) or a SentencePiece .model file.')
        try:
            self._tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f'Cannot load the Hugging Face tokenizer in {str(folder)!r} ({e}); expected '
                'tokenizer.json + tokenizer_config.json of the PaliGemma tokenizer.') from e
        if self._tok.bos_token_id is None:
            raise ValueError(
                f'Hugging Face tokenizer {str(folder)!r} has no BOS token; the π0 prompt rule '
                'starts every prompt with BOS. Set bos_token in its tokenizer_config.json.')
        self.name = str(folder)
        # Ids plain text can produce (added special tokens such as <mask> are never produced).
        self.vocab_size = int(self._tok.vocab_size)

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        """Encode text; special-token strings in the text stay text, as in SentencePiece."""
        ids = list(self._tok.encode(text, add_special_tokens=False, split_special_tokens=True))
        return [int(self._tok.bos_token_id)] + ids if add_bos else ids


class FallbackEncoder:
    r"""
    Deterministic stand-in for the tiny random model: one id per whitespace-separated word.

    Each word maps to ``FALLBACK_FIRST_WORD_ID + blake2b(word) mod (vocab_size - 5)``; the
    answer start ``"\n"`` maps to ``FALLBACK_ANSWER_START_ID``. This is NOT PaliGemma's tokenizer:
    it only gives tests and the demo well-formed, reproducible token ids.
    """

    def __init__(self, vocab_size: int) -> None:
        """
        Create the encoder for a vocabulary of ``vocab_size`` ids.

        Raises:
            ValueError: the vocabulary has no room for word ids.

        """
        if vocab_size <= FALLBACK_FIRST_WORD_ID:
            raise ValueError(
                f'FallbackEncoder needs vocab_size > {FALLBACK_FIRST_WORD_ID}, got {vocab_size}; '
                'use a model config with a larger vocabulary.')
        self.name = 'fallback'
        self.vocab_size = int(vocab_size)

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        """Encode text as one hashed id per word."""
        ids = [BOS_ID] if add_bos else []
        if text == ANSWER_START:
            return ids + [FALLBACK_ANSWER_START_ID]
        span = self.vocab_size - FALLBACK_FIRST_WORD_ID
        for word in text.split():
            digest = hashlib.blake2b(word.encode('utf-8'), digest_size=FALLBACK_HASH_BYTES)
            ids.append(FALLBACK_FIRST_WORD_ID + int.from_bytes(digest.digest(), 'little') % span)
        return ids


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt after the π0 prompt rule."""

    # (L,) int64 token ids, right-padded with PAD_ID.
    tokens: np.ndarray
    # (L,) bool, True for real tokens.
    mask: np.ndarray
    # The cleaned prompt text that was encoded.
    text: str
    # Number of real tokens before truncation (BOS and answer start included).
    num_tokens: int
    # Whether the prompt was cut to max_len.
    truncated: bool


def clean_prompt(prompt: str) -> str:
    """Apply openpi's π0 prompt cleaning: strip, then ``_`` and newline become spaces."""
    text = prompt.strip()
    for char in PROMPT_SPACE_CHARS:
        text = text.replace(char, ' ')
    return text


def find_tokenizer_file(folder: str | Path) -> Path | None:
    """
    Find the PaliGemma tokenizer in a checkpoint folder.

    Looks for each SentencePiece name of ``SENTENCEPIECE_FILE_NAMES`` in ``folder``, then in
    ``folder/assets`` and every ``folder/assets/<asset_id>``, then the same in the parent's
    ``assets`` (where openpi's converter leaves them); then for a Hugging Face
    ``tokenizer.json`` in the same folders.

    Returns:
        The first file found, or None.

    """
    root = Path(folder)
    candidates = [root]
    for assets in (root / ASSETS_DIR_NAME, root.resolve().parent / ASSETS_DIR_NAME):
        candidates.append(assets)
        if assets.is_dir():
            candidates += sorted(p for p in assets.iterdir() if p.is_dir())
    # A SentencePiece model anywhere wins over a tokenizer.json (openpi's reference encoder).
    for names in (SENTENCEPIECE_FILE_NAMES, (HF_TOKENIZER_FILE,)):
        for directory in candidates:
            for name in names:
                if (directory / name).is_file():
                    return directory / name
    return None


class PromptTokenizer:
    """Apply the π0 prompt rule with a :class:`TextEncoder` (SentencePiece or fallback)."""

    def __init__(self, encoder: TextEncoder, max_len: int = DEFAULT_MAX_TOKEN_LEN) -> None:
        """
        Wrap an encoder.

        Args:
            encoder: text → ids.
            max_len: padded token length (48 for π0).

        Raises:
            ValueError: max_len is not positive.

        """
        if max_len <= 0:
            raise ValueError(f'max_len must be a positive token count, got {max_len}.')
        self.encoder = encoder
        self.max_len = int(max_len)

    @property
    def vocab_size(self) -> int:
        """Return the encoder's vocabulary size."""
        return self.encoder.vocab_size

    @property
    def is_fallback(self) -> bool:
        """Return whether this is the stand-in encoder rather than a SentencePiece model."""
        return isinstance(self.encoder, FallbackEncoder)

    @classmethod
    def from_file(
        cls, model_file: str | Path, max_len: int = DEFAULT_MAX_TOKEN_LEN,
    ) -> PromptTokenizer:
        """Load a SentencePiece ``.model`` file, or a Hugging Face ``tokenizer.json``."""
        if Path(model_file).name == HF_TOKENIZER_FILE:
            return cls(HuggingFaceEncoder(model_file), max_len)
        return cls(SentencePieceEncoder(model_file), max_len)

    @classmethod
    def from_path(
        cls, path: str | Path, max_len: int = DEFAULT_MAX_TOKEN_LEN,
    ) -> PromptTokenizer:
        """
        Load the tokenizer from a ``.model`` file, a ``tokenizer.json``, or a folder.

        A folder is searched with :func:`find_tokenizer_file` (a checkpoint folder, or a
        Hugging Face tokenizer folder).

        Raises:
            ValueError: the path does not exist or a folder holds no tokenizer file.

        """
        path = Path(path)
        if path.is_dir():
            found = find_tokenizer_file(path)
            if found is None:
                raise ValueError(
                    f'No tokenizer in checkpoint folder {str(path)!r}: looked for '
                    f'{list(TOKENIZER_FILE_NAMES)} in it, in {ASSETS_DIR_NAME}/ and in '
                    f'{ASSETS_DIR_NAME}/<asset_id>/ (and in {ASSETS_DIR_NAME}/ of the parent '
                    'folder). Copy paligemma_tokenizer.model (or tokenizer.json + '
                    'tokenizer_config.json of a Hugging Face tokenizer folder) there or pass '
                    'tokenizer_path=<file or folder>.')
            return cls.from_file(found, max_len)
        return cls.from_file(path, max_len)

    @classmethod
    def fallback(cls, vocab_size: int, max_len: int = DEFAULT_MAX_TOKEN_LEN) -> PromptTokenizer:
        """Create the deterministic stand-in tokenizer (logs that it is not PaliGemma's)."""
        _LOG.warning(
            'Using the fallback word-hash tokenizer (vocab %d): it is NOT the PaliGemma '
            'tokenizer, fine for the random tiny model only.', vocab_size)
        return cls(FallbackEncoder(vocab_size), max_len)

    def __call__(self, prompt: str) -> TokenizedPrompt:
        """
        Tokenize one prompt with the π0 rule.

        Args:
            prompt: the instruction text.

        Returns:
            Padded tokens, mask and bookkeeping.

        Raises:
            TypeError: prompt is not a str.

        """
        if not isinstance(prompt, str):
            raise TypeError(
                f'prompt must be a str, got {type(prompt).__name__}; pass the instruction text.')
        text = clean_prompt(prompt)
        ids = self.encoder.encode(text, add_bos=True)
        ids += self.encoder.encode(ANSWER_START, add_bos=False)
        num_tokens = len(ids)
        truncated = num_tokens > self.max_len
        if truncated:
            _LOG.warning(
                'Prompt has %d tokens, more than max_len=%d; truncating it (prompt: %r).',
                num_tokens, self.max_len, text)
            ids = ids[:self.max_len]
        tokens = np.full(self.max_len, PAD_ID, dtype=np.int64)  # (L,)
        tokens[:len(ids)] = ids
        mask = np.zeros(self.max_len, dtype=bool)  # (L,)
        mask[:len(ids)] = True
        return TokenizedPrompt(
            tokens=tokens, mask=mask, text=text, num_tokens=num_tokens, truncated=truncated)


def load_tokenizer(
    *,
    tokenizer_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    vocab_size: int | None = None,
    max_len: int = DEFAULT_MAX_TOKEN_LEN,
) -> PromptTokenizer:
    """
    Choose the tokenizer: an explicit file, else the checkpoint's, else the fallback.

    Args:
        tokenizer_path: an explicit ``.model`` file, ``tokenizer.json`` or folder (a checkpoint
            folder or a Hugging Face tokenizer folder); wins when given.
        checkpoint_dir: a checkpoint folder to search (see :func:`find_tokenizer_file`); when
            given, a missing tokenizer is an error (a trained model needs its real tokenizer).
        vocab_size: the model's vocabulary, required for the fallback and checked against the
            loaded tokenizer.
        max_len: padded token length.

    Raises:
        ValueError: no tokenizer is found for a checkpoint, or its vocabulary is larger than the
            model's.

    """
    if tokenizer_path is not None:
        tokenizer = PromptTokenizer.from_path(tokenizer_path, max_len)
    elif checkpoint_dir is not None:
        tokenizer = PromptTokenizer.from_path(checkpoint_dir, max_len)
    elif vocab_size is not None:
        return PromptTokenizer.fallback(vocab_size, max_len)
    else:
        raise ValueError(
            'load_tokenizer needs tokenizer_path, checkpoint_dir or vocab_size (for the '
            'fallback); got none of them.')
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f'Tokenizer {tokenizer.encoder.name!r} has {tokenizer.vocab_size} pieces but the '
            f'model embeds only {vocab_size} ids; use the tokenizer the checkpoint was trained '
            'with.')
    return tokenizer
