"""The draft vocabulary: the target tokens a drafter's lm_head can emit (design §4).

It holds the N target tokens seen most often among the loss-masked answer tokens of the
training data, in ascending target-id order. Two maps travel with a drafter checkpoint,
named as EAGLE-3 / SGLang name them:

- `d2t[i]` = target_id - draft_id for draft id i (an offset, so target = i + d2t[i]);
- `t2d[j]` = True when target token j is in the draft vocabulary.

A smaller N makes the lm_head, the drafter's largest matrix, cheaper.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from specblock.errors import SpecBlockError


@dataclass(frozen=True)
class DraftVocab:
    target_ids: torch.Tensor  # [N] int64, ascending: target id of each draft id
    target_vocab_size: int

    def __post_init__(self) -> None:
        ids = self.target_ids
        if ids.dim() != 1 or ids.numel() == 0:
            raise SpecBlockError("a draft vocabulary needs at least one token")
        if bool((ids[1:] <= ids[:-1]).any()) or int(ids[0]) < 0 or int(ids[-1]) >= self.target_vocab_size:
            raise SpecBlockError("draft vocabulary ids must be unique, ascending and inside the target vocabulary")

    @property
    def size(self) -> int:
        return self.target_ids.numel()

    @property
    def d2t(self) -> torch.Tensor:
        return self.target_ids - torch.arange(self.size)

    @property
    def t2d(self) -> torch.Tensor:
        mask = torch.zeros(self.target_vocab_size, dtype=torch.bool)
        mask[self.target_ids] = True
        return mask

    def to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return self.target_ids[draft_ids]

    def to_draft(self, target_ids: torch.Tensor) -> torch.Tensor:
        """Draft id of each target id, or -1 where the token is outside the draft vocabulary."""
        lookup = torch.full((self.target_vocab_size,), -1, dtype=torch.long)
        lookup[self.target_ids] = torch.arange(self.size)
        return lookup[target_ids]

    @classmethod
    def from_counts(cls, counts: torch.Tensor, size: int, always: Iterable[int] = ()) -> "DraftVocab":
        """The `size` most frequent tokens (ties broken by lower id), plus tokens that must be present."""
        vocab = counts.numel()
        if not 1 <= size <= vocab:
            raise SpecBlockError(f"draft vocabulary size must be in [1, {vocab}], got {size}")
        forced = sorted(set(int(t) for t in always))
        if len(forced) > size:
            raise SpecBlockError(f"{len(forced)} required tokens do not fit in a draft vocabulary of {size}")
        # stable sort on descending counts keeps lower ids first among equal counts
        order = torch.sort(-counts.to(torch.float64), stable=True).indices.tolist()
        chosen = list(forced)
        taken = set(forced)
        for tok in order:
            if len(chosen) == size:
                break
            if tok not in taken:
                chosen.append(tok)
                taken.add(tok)
        return cls(torch.tensor(sorted(chosen), dtype=torch.long), vocab)

    def save(self, path: Path) -> None:
        save_file({"d2t": self.d2t.contiguous(), "t2d": self.t2d}, str(path))

    @classmethod
    def load(cls, path: Path) -> "DraftVocab":
        """Read `d2t`/`t2d`, checking that both describe the same vocabulary."""
        try:
            maps = load_file(str(path))
            d2t, t2d = maps["d2t"].long(), maps["t2d"].bool()
        except Exception as exc:  # missing file, corrupt file, missing key
            raise SpecBlockError(f"cannot read a draft vocabulary from {path}: {exc}") from None
        target_ids = d2t + torch.arange(d2t.numel())
        if int(t2d.sum()) != d2t.numel() or not bool(t2d[target_ids.clamp(0, t2d.numel() - 1)].all()):
            raise SpecBlockError(f"{path}: d2t and t2d disagree (corrupt or mismatched vocabulary maps)")
        return cls(target_ids, t2d.numel())


def count_answer_tokens(sequences: Iterable[tuple[list[int], list[bool]]], vocab_size: int) -> torch.Tensor:
    """How often each target token occurs where the loss mask is on (assistant answer tokens)."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for ids, mask in sequences:
        kept = torch.tensor([t for t, m in zip(ids, mask) if m], dtype=torch.long)
        counts += torch.bincount(kept, minlength=vocab_size)
    return counts
