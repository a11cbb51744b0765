"""Incremental detokenization (python_backends/llm_postprocessing/detokenize.py) with the tokenizer
kinds the families use: streamed pieces join to exactly the one-shot text, spaces and non-ASCII
characters included, where decoding each token alone does not."""
from __future__ import annotations

import importlib.util
import sys

import pytest

TEXT = "The café serves crème brûlée for 5 € near 東京 station, and the river runs."


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def detokenize(repo_root):
    return load(repo_root / "python_backends" / "llm_postprocessing" / "detokenize.py")


@pytest.fixture(scope="module")
def families(repo_root):
    sys.path.insert(0, str(repo_root / "examples" / "tiny_llm"))
    try:
        return load(repo_root / "examples" / "tiny_llm" / "families.py")
    finally:
        sys.path.remove(str(repo_root / "examples" / "tiny_llm"))


@pytest.mark.parametrize("kind", ["sentencepiece", "byte_level"])
def test_streamed_pieces_join_to_the_one_shot_text(detokenize, families, kind):
    tokenizer = getattr(families, f"{kind}_tokenizer")()
    ids = tokenizer.encode(TEXT).ids

    def decode(tokens):
        return tokenizer.decode(tokens, skip_special_tokens=True)

    pieces = [detokenize.new_text(decode, ids[:n], n - 1)[0] for n in range(1, len(ids) + 1)]
    assert "".join(pieces) == decode(ids) == TEXT
    # Handing each step the stable text of the step before (what the postprocessing keeps per
    # stream) changes nothing, in steps of one token or several.
    for step in (1, 3):
        chained, before = [], None
        for n in range(step, len(ids) + step, step):
            piece, before = detokenize.new_text(decode, ids[:n], max(0, n - step), before)
            chained.append(piece)
        assert "".join(chained) == TEXT
    assert all("\ufffd" not in piece for piece in pieces)  # a split character is held back, then sent whole
    assert "€" in pieces and "é" in "".join(pieces[:6])


def test_sentencepiece_tokens_decoded_alone_lose_spaces_and_characters(families):
    """What the incremental decoder fixes (and upstream postprocessing does): per-token decode."""
    tokenizer = families.sentencepiece_tokenizer()
    ids = tokenizer.encode(TEXT).ids
    assert any(piece.startswith("<0x") for piece in tokenizer.encode(TEXT).tokens)  # bytes span tokens
    alone = "".join(tokenizer.decode([i]) for i in ids)
    assert alone != TEXT and " " not in alone and "\ufffd" in alone
