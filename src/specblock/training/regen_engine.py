"""Continuous batching of plain decoding that records what drafter training needs.

`data regen` has thousands of answers to write, so it runs up to `max_batch` requests at a
time: each iteration ONE target forward (`runner.verify_batch` with empty trees) takes the
newest token of every active request. Requests join as others finish; a newcomer's prefill
runs alone. On a batch-invariant target (layout-invariant attention and row-invariant
products: the server's exactness argument, on CPUs whose kernel table finds them) a
request that prefills whole gets the tokens of decoding it alone, greedy or seeded; elsewhere
(CUDA, CPUs without invariant products) they may part at near-ties.

While generating, it keeps per token what `data prepare` would otherwise recompute in a
second pass over the text: the three captured target features after the token, and the
target's top-k next-token log-probabilities. The prompt's features come with its prefill;
its log-probabilities only at the positions asked for (earlier answers of a multi-turn
conversation) and the last. So the features cost no extra target forward.

A finished request's slot keeps its cache and its records until another request takes the
slot. A request whose prompt begins with ALL the tokens a free slot holds (a conversation's
next turn: the earlier prompt and answer, then the new user message) goes to that slot and
prefills only the rest; its records for that prefix are the ones kept (on the 1.5B's regen mix
44-49% of all prompt tokens). Only a whole held sequence counts (not a
chat template's shared header), so where a prompt splits never depends on the batch size or
on which request used a slot before: first turns prefill whole, and a later turn always
splits after its own earlier turn. That split is a chunked prefill, which in bf16 may part
from a whole-prompt prefill at a near-tie.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from specblock.decoding import cache_slots_for
from specblock.sampling import SamplingParams
from specblock.target.runner import TargetRunner, verify_batch
from specblock.target.transformer import Transformer
from specblock.training.prepare import LOGPROB_FLOOR
from specblock.tree import DraftTree
from specblock.verify import sample_token

NO_LOGPROB = LOGPROB_FLOOR  # top-k log-probability where none was computed (rows never trained on)


@dataclass
class GenerationRequest:
    key: object  # the caller's handle, returned with the result
    prompt: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    logit_rows: list[int] = field(default_factory=list)  # prompt positions whose top-k to record


@dataclass
class Generated:
    """One finished request. Row j of `features` / `topk_*` belongs to token j of
    `prompt + tokens`; the last token's row is zeros (nothing ran after it)."""

    key: object
    prompt: list[int]
    tokens: list[int]  # new tokens, the EOS included when the answer ended with one
    finish_reason: str  # "stop" (EOS) or "length"
    features: torch.Tensor  # [P + n, F] in the target's dtype
    topk_ids: torch.Tensor  # [P + n, k] int32
    topk_logprobs: torch.Tensor  # [P + n, k] float32; NO_LOGPROB at rows without logits


@dataclass
class _Active:
    request: GenerationRequest
    runner: TargetRunner
    generator: torch.Generator | None
    tokens: list[int]
    features: list[torch.Tensor]
    topk_ids: list[torch.Tensor]
    topk_logprobs: list[torch.Tensor]
    prompt_logits: torch.Tensor  # [P] bool: the prompt rows whose top-k was computed


@dataclass
class _Held:
    """What a finished request left in its slot: the tokens whose keys/values the cache holds
    (the prompt and every new token but the last) and their rows of the records."""

    tokens: list[int]
    features: torch.Tensor  # [L, F]
    topk_ids: torch.Tensor  # [L, k]
    topk_logprobs: torch.Tensor  # [L, k]
    has_logits: torch.Tensor  # [L] bool

    def reusable(self, prompt: list[int], logit_rows: list[int]) -> int:
        """How many leading prompt tokens can be taken from here: all held tokens when the
        prompt begins with them and goes on past them (its last token must run to pick the
        first new token), else none; cut at the first asked-for row whose top-k was not
        computed here."""
        n = len(self.tokens)
        if n >= len(prompt) or prompt[:n] != self.tokens:
            return 0
        missing = [row for row in logit_rows if row < n and not self.has_logits[row]]
        return min([n, *missing])


class BatchedGeneration:
    def __init__(
        self, model: Transformer, max_batch: int, slot_capacity: int, eos_ids: Iterable[int], top_k: int = 20
    ) -> None:
        """`slot_capacity`: KV slots per request (`decoding.cache_slots_for(prompt + new tokens, 0)`)."""
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.model = model
        self.eos = frozenset(eos_ids)
        self.top_k = top_k
        self.slot_capacity = slot_capacity
        self.runners = [TargetRunner(model, cache) for cache in model.new_cache_pool(max_batch, slot_capacity)]
        self.held: dict[int, _Held] = {}
        self.prefilled = self.reused = 0  # prompt tokens run / taken from a slot's cache

    def fits(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        return cache_slots_for(prompt_tokens + max_new_tokens, 0) <= self.slot_capacity and (
            prompt_tokens < self.model.cfg.max_position_embeddings
        )

    def run(self, next_request: Callable[[], GenerationRequest | None]) -> Iterator[Generated]:
        """Generate requests until `next_request` has none and every started one has finished;
        yields each result as soon as it is finished. `next_request` is asked whenever a slot is
        free, so a caller may hand in work that depends on earlier results (a conversation's
        next turn)."""
        active: dict[int, _Active] = {}
        while True:
            free = [slot for slot in range(len(self.runners)) if slot not in active]
            while free and (request := next_request()) is not None:
                slot = max(free, key=lambda s: self._reusable(s, request))  # the first on ties
                state = self._prefill(request, slot)
                if self._finished(state):
                    yield self._result(state, slot)  # the first token ended it: the slot stays free
                else:
                    active[slot] = state
                    free.remove(slot)
            if not active:
                return
            for slot in self._step(list(active.items())):
                yield self._result(active.pop(slot), slot)

    def _topk(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.float()
        top = logits.topk(self.top_k, dim=-1)  # of the logits, then normalised (no log-softmax output)
        return top.indices.to(torch.int32).cpu(), (top.values - logits.logsumexp(-1, keepdim=True)).cpu()

    def _reusable(self, slot: int, request: GenerationRequest) -> int:
        held = self.held.get(slot)
        return 0 if held is None else held.reusable(request.prompt, request.logit_rows)

    def _prefill(self, request: GenerationRequest, slot: int) -> _Active:
        n = len(request.prompt)
        if not self.fits(n, request.max_new_tokens):
            raise ValueError(f"a {n}-token prompt with {request.max_new_tokens} new tokens does not fit a batch slot")
        rows = sorted(set(request.logit_rows) - {n - 1})
        reuse = self._reusable(slot, request)
        held = self.held.pop(slot, None)  # the prefill below overwrites the cache after `reuse`
        runner = self.runners[slot]
        fresh = [row for row in rows if row >= reuse]
        step = runner.prefill(request.prompt, self.slot_capacity, capture=True, logit_rows=fresh, reuse=reuse)
        self.prefilled += n - reuse
        self.reused += reuse
        sampling = request.sampling
        generator = None if sampling.greedy else sampling.generator()
        first = sample_token(step.logits[-1], sampling, generator)
        ids = torch.zeros(n, self.top_k, dtype=torch.int32)
        logprobs = torch.full((n, self.top_k), NO_LOGPROB)
        features = [step.features]
        if reuse:
            kept = torch.tensor([row for row in rows if row < reuse], dtype=torch.long)
            ids[kept], logprobs[kept] = held.topk_ids[kept], held.topk_logprobs[kept]
            features.insert(0, held.features[:reuse])
        top_ids, top_values = self._topk(step.logits)
        where = torch.tensor([*fresh, n - 1])
        ids[where], logprobs[where] = top_ids, top_values
        asked = torch.zeros(n, dtype=torch.bool)
        asked[[*rows, n - 1]] = True
        return _Active(request, runner, generator, [first], features, [ids], [logprobs], asked)

    def _step(self, batch: list[tuple[int, _Active]]) -> list[int]:
        """One forward over every active request's newest token; returns the slots that finished."""
        states = [state for _, state in batch]
        steps = verify_batch([s.runner for s in states], [s.tokens[-1] for s in states],
                             [DraftTree() for _ in states], capture=True)  # fmt: skip
        logits = torch.cat([step.logits for step in steps])
        top_ids, top_values = self._topk(logits)
        done = []
        for row, ((slot, state), step) in enumerate(zip(batch, steps)):
            state.runner.commit([0])  # keep the root's keys/values
            state.features.append(step.features)
            state.topk_ids.append(top_ids[row : row + 1])
            state.topk_logprobs.append(top_values[row : row + 1])
            state.tokens.append(sample_token(logits[row], state.request.sampling, state.generator))
            if self._finished(state):
                done.append(slot)
        return done

    def _finished(self, state: _Active) -> bool:
        last = state.tokens[-1]
        room = self.model.cfg.max_position_embeddings - len(state.request.prompt)
        return last in self.eos or len(state.tokens) >= min(state.request.max_new_tokens, room)

    def _result(self, state: _Active, slot: int) -> Generated:
        """The finished request's records; its slot keeps them with its cache (`_Held`)."""
        features = torch.cat(state.features)
        topk_ids, topk_logprobs = torch.cat(state.topk_ids), torch.cat(state.topk_logprobs)
        cached = state.request.prompt + state.tokens[:-1]
        computed = torch.ones(len(state.tokens) - 1, dtype=torch.bool)
        self.held[slot] = _Held(cached, features, topk_ids, topk_logprobs, torch.cat([state.prompt_logits, computed]))
        pad = torch.zeros(1, features.shape[1], dtype=features.dtype, device=features.device)
        return Generated(
            key=state.request.key,
            prompt=state.request.prompt,
            tokens=state.tokens,
            finish_reason="stop" if state.tokens[-1] in self.eos else "length",
            features=torch.cat([features, pad]),
            topk_ids=torch.cat([topk_ids, torch.zeros(1, self.top_k, dtype=torch.int32)]),
            topk_logprobs=torch.cat([topk_logprobs, torch.full((1, self.top_k), NO_LOGPROB)]),
        )
