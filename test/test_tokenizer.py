"""Tests of the π0 prompt rule with a SentencePiece model trained at test time (no hub)."""

import io
import json
import logging
from pathlib import Path
import random

import numpy as np
from pi0_policy.runtime import tokenizer as tok
import pytest
import sentencepiece

# Small vocabulary trained from a word list; '\n' is a user symbol as in the Gemma vocabulary.
TRAIN_VOCAB_SIZE = 120
TRAIN_WORDS = (
    'pick up the red cube and place it in bowl open close gripper move left right arm towel '
    'fold shirt transfer insertion peg socket').split()
TRAIN_SENTENCES = 300
TRAIN_SENTENCE_WORDS = 8
MAX_LEN = tok.DEFAULT_MAX_TOKEN_LEN


def train_sentencepiece(path: Path, vocab_size: int = TRAIN_VOCAB_SIZE) -> Path:
    """
    Train a small BPE SentencePiece model with Gemma's special ids and write it to path.

    Like Gemma's: no normalization, no dummy prefix, whitespace kept as it is.
    """
    rng = random.Random(0)
    lines = [' '.join(rng.choice(TRAIN_WORDS) for _ in range(TRAIN_SENTENCE_WORDS))
             for _ in range(TRAIN_SENTENCES)]
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buffer, vocab_size=vocab_size,
        pad_id=tok.PAD_ID, eos_id=tok.EOS_ID, bos_id=tok.BOS_ID, unk_id=tok.UNK_ID,
        user_defined_symbols=[tok.ANSWER_START], model_type='bpe',
        normalization_rule_name='identity', add_dummy_prefix=False,
        remove_extra_whitespaces=False, minloglevel=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture(scope='module')
def sp_file(tmp_path_factory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp('spm') / 'tokenizer.model')


@pytest.fixture(scope='module')
def sp(sp_file) -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_file=str(sp_file))


def expected_ids(sp, text: str) -> list[int]:
    return sp.encode(text, add_bos=True) + sp.encode('\n')


def test_rule_bos_answer_start_padding_and_mask(sp_file, sp):
    tokenizer = tok.PromptTokenizer.from_file(sp_file)
    out = tokenizer('  pick up the red cube  ')
    ids = expected_ids(sp, 'pick up the red cube')
    assert out.text == 'pick up the red cube'
    assert ids[0] == tok.BOS_ID
    assert out.tokens.shape == (MAX_LEN,) and out.tokens.dtype == np.int64
    assert out.mask.shape == (MAX_LEN,) and out.mask.dtype == bool
    assert out.tokens[:len(ids)].tolist() == ids
    assert out.tokens[len(ids) - 1] == sp.piece_to_id('\n')
    assert (out.tokens[len(ids):] == tok.PAD_ID).all()
    assert out.mask.sum() == len(ids) and out.mask[:len(ids)].all()
    assert out.num_tokens == len(ids) and not out.truncated


def test_underscore_and_newline_become_spaces(sp_file, sp):
    tokenizer = tok.PromptTokenizer.from_file(sp_file)
    plain = tokenizer('fold the towel')
    assert tokenizer('fold_the_towel').tokens.tolist() == plain.tokens.tolist()
    assert tokenizer('fold\nthe\ntowel\n').tokens.tolist() == plain.tokens.tolist()
    # Without the rule the underscore would be encoded differently (unknown in this vocabulary).
    assert sp.encode('fold_the_towel', add_bos=True) != sp.encode('fold the towel', add_bos=True)
    assert tok.clean_prompt(' a_b\nc ') == 'a b c'


def test_truncation_warns_and_fills_mask(sp_file, caplog):
    tokenizer = tok.PromptTokenizer.from_file(sp_file)
    long_prompt = ' '.join(['socket insertion peg'] * 40)
    with caplog.at_level(logging.WARNING, logger=tok.__name__):
        out = tokenizer(long_prompt)
    assert out.truncated and out.num_tokens > MAX_LEN
    assert out.mask.all() and out.tokens.shape == (MAX_LEN,)
    assert out.tokens[0] == tok.BOS_ID
    assert 'truncating' in caplog.text and str(MAX_LEN) in caplog.text


def test_custom_max_len_and_invalid(sp_file):
    tokenizer = tok.PromptTokenizer.from_file(sp_file, max_len=8)
    assert tokenizer('pick').tokens.shape == (8,)
    with pytest.raises(ValueError, match='max_len must be a positive'):
        tok.PromptTokenizer.from_file(sp_file, max_len=0)
    with pytest.raises(TypeError, match='prompt must be a str, got int'):
        tokenizer(3)


def test_find_in_checkpoint_folder_and_assets(tmp_path):
    root = tmp_path / 'ckpt'
    root.mkdir()
    assert tok.find_tokenizer_file(root) is None
    nested = train_sentencepiece(root / 'assets' / 'aloha' / 'paligemma_tokenizer.model')
    assert tok.find_tokenizer_file(root) == nested
    in_assets = train_sentencepiece(root / 'assets' / 'tokenizer.model')
    assert tok.find_tokenizer_file(root) == in_assets
    top = train_sentencepiece(root / 'paligemma_tokenizer.model')
    assert tok.find_tokenizer_file(root) == top
    assert tok.PromptTokenizer.from_path(root).encoder.name == str(top)


def test_missing_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match='No tokenizer in checkpoint folder'):
        tok.PromptTokenizer.from_path(tmp_path)
    with pytest.raises(ValueError, match='does not exist'):
        tok.PromptTokenizer.from_path(tmp_path / 'nope.model')
    bad = tmp_path / 'bad.model'
    bad.write_bytes(b'not a model')
    with pytest.raises(ValueError, match='Cannot read .* as a SentencePiece model'):
        tok.PromptTokenizer.from_file(bad)


def test_load_tokenizer_choices(sp_file, tmp_path, caplog):
    assert tok.load_tokenizer(tokenizer_path=sp_file).encoder.name == str(sp_file)
    with pytest.raises(ValueError, match='pieces but the model embeds only 50 ids'):
        tok.load_tokenizer(tokenizer_path=sp_file, vocab_size=50)
    with pytest.raises(ValueError, match='No tokenizer in checkpoint folder'):
        tok.load_tokenizer(checkpoint_dir=tmp_path, vocab_size=1000)
    with caplog.at_level(logging.WARNING, logger=tok.__name__):
        fallback = tok.load_tokenizer(vocab_size=1000)
    assert fallback.is_fallback and 'NOT the PaliGemma tokenizer' in caplog.text
    with pytest.raises(ValueError, match='needs tokenizer_path, checkpoint_dir or vocab_size'):
        tok.load_tokenizer()


def test_fallback_is_deterministic_and_in_range():
    tokenizer = tok.PromptTokenizer.fallback(vocab_size=64)
    a = tokenizer('pick_up the cube')
    b = tok.PromptTokenizer.fallback(vocab_size=64)('pick up  the cube')
    assert a.tokens.tolist() == b.tokens.tolist()
    # BOS, four words, answer start.
    assert a.tokens[0] == tok.BOS_ID
    assert a.tokens[5] == tok.FALLBACK_ANSWER_START_ID and a.mask.sum() == 6
    assert (a.tokens < 64).all()
    assert tokenizer('pick up the ball').tokens.tolist() != a.tokens.tolist()
    with pytest.raises(ValueError, match='needs vocab_size >'):
        tok.FallbackEncoder(3)


# --------------------------------------------------------------- Hugging Face tokenizer folder

# Prompts for the SentencePiece vs Hugging Face comparison: the openpi rule's characters ('_',
# newlines, outer spaces), inner double spaces, characters outside the vocabulary, text that looks
# like special tokens, and a prompt longer than 48 tokens.
COMPARED_PROMPTS = (
    'pick up the red cube',
    '  Transfer cube  ',
    'fold_the_towel\nand place it in the bowl\n',
    'move  the   left arm',
    'ünïcode 123 ✓',
    '<s> open </s> the gripper <pad>',
    ' '.join(['socket insertion peg'] * 40),
)


def convert_to_hugging_face(sp_file: Path, folder: Path) -> Path:
    """Convert a SentencePiece model to a Hugging Face fast tokenizer folder (transformers)."""
    from transformers import AutoTokenizer

    source = folder.parent / f'{folder.name}_source'
    source.mkdir(parents=True)
    (source / 'tokenizer.model').write_bytes(sp_file.read_bytes())
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_file))
    specials = {key: sp.id_to_piece(i) for key, i in (
        ('pad_token', tok.PAD_ID), ('eos_token', tok.EOS_ID), ('bos_token', tok.BOS_ID),
        ('unk_token', tok.UNK_ID))}
    (source / 'tokenizer_config.json').write_text(json.dumps(
        {'tokenizer_class': 'GemmaTokenizer', **specials}))
    # transformers' Gemma converter turns the SentencePiece model into tokenizer.json.
    AutoTokenizer.from_pretrained(str(source), local_files_only=True).save_pretrained(str(folder))
    assert (folder / 'tokenizer.json').is_file() and not (folder / 'tokenizer.model').exists()
    return folder


@pytest.fixture(scope='module')
def hf_folder(sp_file, tmp_path_factory) -> Path:
    return convert_to_hugging_face(sp_file, tmp_path_factory.mktemp('hf') / 'paligemma')


def test_hugging_face_folder_gives_the_sentencepiece_ids(sp_file, hf_folder):
    reference = tok.PromptTokenizer.from_path(sp_file)
    converted = tok.PromptTokenizer.from_path(hf_folder)
    assert isinstance(converted.encoder, tok.HuggingFaceEncoder)
    assert converted.vocab_size == reference.vocab_size
    for prompt in COMPARED_PROMPTS:
        a, b = reference(prompt), converted(prompt)
        assert b.tokens.tolist() == a.tokens.tolist(), prompt
        assert b.mask.tolist() == a.mask.tolist(), prompt
        assert (b.num_tokens, b.truncated, b.text) == (a.num_tokens, a.truncated, a.text)
    long = converted(COMPARED_PROMPTS[-1])
    assert long.truncated and long.mask.all() and long.tokens.shape == (MAX_LEN,)
    # The tokenizer.json file itself works as well as its folder.
    by_file = tok.PromptTokenizer.from_path(hf_folder / 'tokenizer.json')
    assert by_file('pick up').tokens.tolist() == reference('pick up').tokens.tolist()


def test_hugging_face_folder_in_a_checkpoint_and_errors(sp_file, hf_folder, tmp_path):
    root = tmp_path / 'lerobot_ckpt'
    (root / 'assets').mkdir(parents=True)
    for name in ('tokenizer.json', 'tokenizer_config.json'):
        (root / name).write_bytes((hf_folder / name).read_bytes())
    assert tok.find_tokenizer_file(root) == root / 'tokenizer.json'
    loaded = tok.load_tokenizer(checkpoint_dir=root, vocab_size=TRAIN_VOCAB_SIZE)
    assert isinstance(loaded.encoder, tok.HuggingFaceEncoder)
    # A SentencePiece model in the same folder is preferred (openpi's reference).
    train_sentencepiece(root / 'assets' / 'paligemma_tokenizer.model')
    assert tok.find_tokenizer_file(root).name == 'paligemma_tokenizer.model'
    with pytest.raises(ValueError, match='holds no tokenizer.json; expected a Hugging Face'):
        tok.HuggingFaceEncoder(tmp_path)
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'tokenizer.json').write_text('{}')
    with pytest.raises(ValueError, match='Cannot load the Hugging Face tokenizer in'):
        tok.HuggingFaceEncoder(broken)
