"""Incremental detokenization for the server: the pieces add up to the whole decode, half
UTF-8 characters and stop strings are held back, origins follow the draft / target split."""

import random

import pytest

from specblock.serving.text_stream import TextAssembler

TEXT = "Héllo wörld ✓ 日本語 and plain words, again: héllo ✓✓ end."


def byte_decode(ids: list[int]) -> str:  # a byte-level BPE tokenizer with one token per byte
    return bytes(ids).decode("utf-8", errors="replace")


WORDS = ["▁The", "▁cat", "▁sat", ",", "▁on", "▁the", "▁mat", ".", "▁Then", "▁it", "▁slept"]


def sentencepiece_decode(ids: list[int]) -> str:  # drops the leading space of the whole text
    return "".join(WORDS[i] for i in ids).replace("▁", " ").removeprefix(" ")


def feed(assembler: TextAssembler, ids: list[int], seed: int) -> tuple[str, list[tuple[str, str]]]:
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(ids):
        step = rng.randint(1, 5)
        chunk = ids[i : i + step]
        pieces += assembler.add(chunk, drafted=rng.randint(0, len(chunk)))
        i += step
    pieces += assembler.finish()
    return "".join(text for _, text in pieces), pieces


@pytest.mark.parametrize("seed", range(20))
def test_pieces_add_up_to_the_whole_text(seed):
    ids = list(TEXT.encode())
    text, pieces = feed(TextAssembler(byte_decode), ids, seed)
    assert text == TEXT
    assert all("\ufffd" not in t for _, t in pieces)  # half characters were held back
    assert {o for o, _ in pieces} <= {"draft", "target"}


@pytest.mark.parametrize("seed", range(10))
def test_leading_space_tokenizers_decode_right(seed):
    ids = [random.Random(seed).randrange(len(WORDS)) for _ in range(40)]
    assert feed(TextAssembler(sentencepiece_decode), ids, seed)[0] == sentencepiece_decode(ids)


@pytest.mark.parametrize("stop", ["✓✓", "again", "wörld", "."])
@pytest.mark.parametrize("seed", range(5))
def test_stop_strings_are_never_sent(stop, seed):
    ids = list(TEXT.encode())
    assembler = TextAssembler(byte_decode, (stop, "never there"))
    rng = random.Random(seed)
    sent, i = "", 0
    while i < len(ids):
        step = rng.randint(1, 4)
        sent += "".join(t for _, t in assembler.add(ids[i : i + step], 0))
        assert stop not in sent and TEXT.startswith(sent)
        i += step
    sent += "".join(t for _, t in assembler.finish())
    assert sent == TEXT[: TEXT.index(stop)]


def test_origins_follow_the_draft_split():
    assembler = TextAssembler(byte_decode)
    assert assembler.add(list(b"abc"), drafted=2) == [("draft", "ab"), ("target", "c")]
    assert assembler.add(list(b"de"), drafted=0) == [("target", "de")]
    assert assembler.add(list(b"fg"), drafted=2) == [("draft", "fg")]
