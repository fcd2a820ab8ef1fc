"""Prepared shards -> padded training batches with draft-vocabulary targets.

Position j of a sequence carries the target's features after token j and its top-k
distribution over token j+1. `ok[j]` says whether that prediction is trained on: token j+1
is an answer token and the target's argmax at j lies in the draft vocabulary (design §5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_file

from specblock.errors import SpecBlockError
from specblock.training.draft_vocab import DraftVocab


@dataclass
class Sequence:
    tokens: torch.Tensor  # [n] int64
    answer_mask: torch.Tensor  # [n] bool
    features: torch.Tensor  # [n, 3H] fp16
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


def load_sequences(data_dir: Path, split: str) -> list[Sequence]:
    """All sequences of the `train` or `heldout` shards."""
    manifest = load_manifest(data_dir)
    out: list[Sequence] = []
    for name in manifest["shards"][split]:
        try:
            shard = load_file(str(Path(data_dir) / name))
        except Exception as exc:  # corrupt or truncated file
            raise SpecBlockError(f"cannot read shard {name} in {data_dir}: {exc}") from None
        offsets = shard["offsets"].tolist()
        for a, b in zip(offsets[:-1], offsets[1:]):
            out.append(
                Sequence(
                    tokens=shard["tokens"][a:b].long(),
                    answer_mask=shard["answer_mask"][a:b].bool(),
                    features=shard["features"][a:b],
                    topk_ids=shard["topk_ids"][a:b].long(),
                    topk_logprobs=shard["topk_logprobs"][a:b],
                )
            )
    return out


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
