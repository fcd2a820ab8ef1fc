"""Prepared shards -> padded training batches with draft-vocabulary targets.

Position j of a sequence carries the target's features after token j and its top-k
distribution over token j+1. `ok[j]` says whether that prediction is trained on: token j+1
is an answer token and the target's argmax at j lies in the draft vocabulary (design §5).
"""

from __future__ import annotations

import collections.abc
import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open

from specblock.errors import SpecBlockError
from specblock.training.draft_vocab import DraftVocab


SEQUENCE_KEYS = ("tokens", "answer_mask", "features", "topk_ids", "topk_logprobs")


@dataclass
class Sequence:
    tokens: torch.Tensor  # [n] int64
    answer_mask: torch.Tensor  # [n] bool
    features: torch.Tensor  # [n, 3H] fp16 (data prepare) or bf16 (data regen)
    topk_ids: torch.Tensor  # [n, k] int64 target ids
    topk_logprobs: torch.Tensor  # [n, k] fp16


@dataclass
class Batch:
    tokens: torch.Tensor  # [B, P]
    features: torch.Tensor  # [B, P, 3H] float32
    loss_mask: torch.Tensor  # [B, P] bool: token j+1 is an answer token (j+1 inside the sequence)
    ok: torch.Tensor  # [B, P] bool: loss_mask and the target argmax at j is in the draft vocabulary
    target_argmax: torch.Tensor  # [B, P] target id of the target's argmax at j
    draft_ids: torch.Tensor  # [B, P, k] draft ids of the target's top-k (-1 when outside)
    draft_probs: torch.Tensor  # [B, P, k] target probabilities renormalised over the kept entries

    @property
    def answer_positions(self) -> int:
        return int(self.loss_mask.sum())

    def to(self, device: torch.device | str) -> "Batch":
        """The same batch on `device` (online adaptation trains the drafter where it drafts)."""
        return Batch(*(getattr(self, f.name).to(device) for f in fields(self)))


def load_manifest(data_dir: Path) -> dict:
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise SpecBlockError(f"{data_dir} holds no prepared data (no manifest.json): run `specblock data prepare`")
    manifest = json.loads(path.read_text())
    if not manifest.get("complete"):
        raise SpecBlockError(f"{data_dir}: `specblock data prepare` did not finish; run it again to resume")
    return manifest


class ShardedSequences(collections.abc.Sequence):
    """The sequences of one split, read from their shards when indexed. The shards are memory-
    mapped (safetensors), so a data set larger than RAM trains like a small one: a step reads
    only the rows of the sequences it draws."""

    def __init__(self, data_dir: Path, names: list[str]) -> None:
        self._files = []
        self._index: list[tuple[int, int, int]] = []  # (file, first row, end row) per sequence
        for name in names:
            try:
                f = safe_open(str(Path(data_dir) / name), framework="pt")
                offsets = f.get_tensor("offsets").tolist()
                missing = [k for k in SEQUENCE_KEYS if k not in f.keys()]
            except Exception as exc:  # corrupt or truncated file
                raise SpecBlockError(f"cannot read shard {name} in {data_dir}: {exc}") from None
            if missing:
                raise SpecBlockError(f"shard {name} in {data_dir} lacks {', '.join(missing)}")
            self._index += [(len(self._files), a, b) for a, b in zip(offsets[:-1], offsets[1:])]
            self._files.append(f)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        file, a, b = self._index[i]
        f = self._files[file]
        rows = {key: f.get_slice(key)[a:b] for key in SEQUENCE_KEYS}
        return Sequence(
            tokens=rows["tokens"].long(),
            answer_mask=rows["answer_mask"].bool(),
            features=rows["features"],
            topk_ids=rows["topk_ids"].long(),
            topk_logprobs=rows["topk_logprobs"],
        )


def load_sequences(data_dir: Path, split: str) -> ShardedSequences:
    """All sequences of the `train` or `heldout` shards (read on access)."""
    manifest = load_manifest(data_dir)
    return ShardedSequences(data_dir, manifest["shards"][split])


def collate(seqs: list[Sequence], vocab: DraftVocab) -> Batch:
    """Pad to the longest sequence; padding positions have every mask off."""
    p = max(s.tokens.numel() for s in seqs)
    b = len(seqs)
    k = seqs[0].topk_ids.shape[1]
    width = seqs[0].features.shape[1]
    tokens = torch.zeros(b, p, dtype=torch.long)
    features = torch.zeros(b, p, width)
    loss_mask = torch.zeros(b, p, dtype=torch.bool)
    topk_ids = torch.zeros(b, p, k, dtype=torch.long)
    topk_logprobs = torch.full((b, p, k), -1e4)
    for r, s in enumerate(seqs):
        n = s.tokens.numel()
        tokens[r, :n] = s.tokens
        features[r, :n] = s.features.float()
        loss_mask[r, : n - 1] = s.answer_mask[1:]
        topk_ids[r, :n] = s.topk_ids
        topk_logprobs[r, :n] = s.topk_logprobs.float()
    draft_ids = vocab.to_draft(topk_ids)
    kept_logprobs = topk_logprobs.masked_fill(draft_ids < 0, float("-inf"))
    draft_probs = torch.softmax(kept_logprobs, dim=-1).nan_to_num(0.0)
    target_argmax = topk_ids[..., 0]
    ok = loss_mask & (draft_ids[..., 0] >= 0)
    return Batch(tokens, features, loss_mask, ok, target_argmax, draft_ids, draft_probs)
