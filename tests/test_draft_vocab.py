"""Draft vocabulary: frequency selection, d2t / t2d maps (EAGLE-3 convention), round trip, corruption."""

import pytest
import torch
from safetensors.torch import save_file

from specblock.errors import SpecBlockError
from specblock.training.draft_vocab import DraftVocab, count_answer_tokens


def test_counts_only_loss_masked_tokens():
    seqs = [([1, 2, 2, 3], [False, True, True, True]), ([3, 3, 4], [True, True, False])]
    assert count_answer_tokens(seqs, vocab_size=6).tolist() == [0, 0, 2, 3, 0, 0]


def test_most_frequent_tokens_with_forced_ones_and_maps():
    counts = torch.tensor([0, 5, 9, 1, 9, 0, 7, 0])
    vocab = DraftVocab.from_counts(counts, size=4, always=[0])  # 0 forced (e.g. EOS) even if unseen
    assert vocab.target_ids.tolist() == [0, 2, 4, 6]  # 9, 9 (tie: lower id first), 7
    assert vocab.d2t.tolist() == [0, 1, 2, 3]  # target = draft + d2t
    assert vocab.t2d.tolist() == [True, False, True, False, True, False, True, False]
    assert vocab.to_target(torch.tensor([3, 1])).tolist() == [6, 2]
    assert vocab.to_draft(torch.tensor([6, 3, 0])).tolist() == [3, -1, 0]


def test_round_trip_and_corrupt_maps(tmp_path):
    vocab = DraftVocab.from_counts(torch.arange(50), size=10)
    vocab.save(tmp_path / "vocab.safetensors")
    again = DraftVocab.load(tmp_path / "vocab.safetensors")
    assert torch.equal(again.target_ids, vocab.target_ids) and again.target_vocab_size == 50
    t2d = vocab.t2d.clone()
    t2d[0] = True  # one token too many: the maps no longer agree
    save_file({"d2t": vocab.d2t, "t2d": t2d}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SpecBlockError, match="disagree"):
        DraftVocab.load(tmp_path / "bad.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(SpecBlockError, match="cannot read"):
        DraftVocab.load(tmp_path / "junk.safetensors")


def test_invalid_sizes():
    with pytest.raises(SpecBlockError):
        DraftVocab.from_counts(torch.ones(5), size=0)
    with pytest.raises(SpecBlockError):
        DraftVocab.from_counts(torch.ones(5), size=2, always=[0, 1, 2])
