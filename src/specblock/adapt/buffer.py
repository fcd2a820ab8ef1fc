"""A bounded replay buffer of the verifier's free feedback, kept as training sequences.

Every position the target commits brings, at no extra target cost, what `data prepare`
computes offline: the token, the target's three captured features, and (for positions
the target verified) its next-token distribution as top-k log-probs. A request is one
growing segment; finished segments stay until the position capacity pushes the oldest out.

Position j's top-k is the target's distribution over token j+1, so token j+1 is a loss
position only when position j's distribution is known (`answer_mask[j+1]`): prompt
positions come from the prefill, whose per-position distributions the engine does not keep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from specblock.drafters.base import PrefillFeedback, VerifyFeedback
from specblock.training.dataset import Sequence

TOPK = 20  # as `data prepare` stores


@dataclass
class Segment:
    """One request's committed positions (prompt first)."""

    tokens: list[int] = field(default_factory=list)
    features: list[torch.Tensor] = field(default_factory=list)  # [3H] fp16 each
    topk_ids: list[torch.Tensor] = field(default_factory=list)  # [TOPK] each
    topk_logprobs: list[torch.Tensor] = field(default_factory=list)
    known: list[bool] = field(default_factory=list)  # the distribution at this position is stored
    generated: list[bool] = field(default_factory=list)  # the token is generated (not prompt)

    def __len__(self) -> int:
        return len(self.tokens)

    def is_loss(self, j: int) -> bool:
        """Token j is a loss target: generated, and its distribution stored at position j-1."""
        return j > 0 and self.generated[j] and self.known[j - 1]

    def answer_positions(self) -> int:
        return sum(1 for j in range(len(self)) if self.is_loss(j))

    def to_sequence(self, loss_from: int = 0, loss_to: int | None = None) -> Sequence:
        """The segment as a training sequence; only tokens j in [loss_from, loss_to) are loss targets."""
        n = len(self)
        loss_to = n if loss_to is None else loss_to
        answer = torch.tensor([loss_from <= j < loss_to and self.is_loss(j) for j in range(n)])
        return Sequence(
            tokens=torch.tensor(self.tokens, dtype=torch.long),
            answer_mask=answer,
            features=torch.stack(self.features),
            topk_ids=torch.stack(self.topk_ids).long(),
            topk_logprobs=torch.stack(self.topk_logprobs),
        )

    def drop_front(self, count: int) -> None:
        for name in ("tokens", "features", "topk_ids", "topk_logprobs", "known", "generated"):
            del getattr(self, name)[:count]


class FeedbackBuffer:
    """At most `capacity` positions over all segments; the newest are kept."""

    def __init__(self, capacity: int = 16384) -> None:
        if capacity < 64:
            raise ValueError("the feedback buffer needs room for at least 64 positions")
        self.capacity = capacity
        self.segments: list[Segment] = []
        self.total_answer = 0  # loss positions ever added (a clock for windows)

    def __len__(self) -> int:
        return sum(len(s) for s in self.segments)

    @property
    def current(self) -> Segment:
        return self.segments[-1]

    def start_request(self, prefill: PrefillFeedback) -> None:
        """A new segment holding the prompt (features, no distributions)."""
        seg = Segment()
        missing_ids = torch.zeros(TOPK, dtype=torch.int32)
        missing_logprobs = torch.full((TOPK,), -1e4, dtype=torch.float16)
        for tok, feat in zip(prefill.prompt, prefill.features.to(torch.float16).cpu()):
            seg.tokens.append(tok)
            seg.features.append(feat)
            seg.topk_ids.append(missing_ids)
            seg.topk_logprobs.append(missing_logprobs)
            seg.known.append(False)
            seg.generated.append(False)
        self.segments.append(seg)
        self._bound()

    def add_verification(self, feedback: VerifyFeedback) -> int:
        """Append the committed path (root first); returns the loss positions it added."""
        seg = self.current
        logprobs = torch.log_softmax(feedback.logits.float(), dim=-1)
        top = logprobs.topk(TOPK, dim=-1)
        added = 0
        for j, tok in enumerate(feedback.tokens):
            if seg.known and seg.known[-1]:
                added += 1  # this token's distribution sits at the previous position
            seg.tokens.append(tok)
            seg.features.append(feedback.features[j].to(torch.float16).cpu())
            seg.topk_ids.append(top.indices[j].to(torch.int32).cpu())
            seg.topk_logprobs.append(top.values[j].clamp(min=-60).to(torch.float16).cpu())
            seg.known.append(True)
            seg.generated.append(True)
        self.total_answer += added
        self._bound()
        return added

    def split(self, recent: int, context: int = 32) -> tuple[list[Sequence], list[Sequence]]:
        """(train, held-out) sequences: held-out = the newest `recent` loss positions (with
        `context` positions before them), train = every older loss position."""
        train, heldout = [], []
        left = recent
        for seg in reversed(self.segments):
            n_answer = seg.answer_positions()
            if n_answer == 0:
                continue
            if left <= 0:
                train.append(seg.to_sequence())
                continue
            # the position from which the newest `left` loss positions of this segment start
            cut, count = len(seg), 0
            while cut > 0 and count < left:
                cut -= 1
                if seg.is_loss(cut):
                    count += 1
            heldout.append(_tail(seg.to_sequence(loss_from=cut), max(0, cut - context)))
            left -= count
            if count < n_answer:
                train.append(seg.to_sequence(loss_to=cut))
        return train[::-1], heldout[::-1]

    def _bound(self) -> None:
        excess = len(self) - self.capacity
        while excess > 0 and len(self.segments) > 1:
            excess -= len(self.segments.pop(0))
        if excess > 0:
            self.segments[0].drop_front(excess)


def _tail(seq: Sequence, start: int) -> Sequence:
    return Sequence(seq.tokens[start:], seq.answer_mask[start:], seq.features[start:], seq.topk_ids[start:], seq.topk_logprobs[start:])
