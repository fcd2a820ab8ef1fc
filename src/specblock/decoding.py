"""The speculative decoding loop, generic over drafters.

Each iteration: the drafter proposes a tree, the target verifies it in one forward, the
acceptance rule keeps a path plus one target token, the cache keeps only that path, and
the drafter is told what happened. Tokens are yielded as soon as they are accepted.
EOS, max-new-tokens and stop strings are checked token by token, so they cut inside an
accepted path exactly where plain decoding would have stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from specblock.drafters.base import Drafter, PrefillFeedback, VerifyFeedback
from specblock.errors import InvalidSettingError
from specblock.sampling import SamplingParams
from specblock.target.runner import TargetRunner, TargetStep
from specblock.tree import DraftTree
from specblock.verify import accept_greedy, accept_sampling, sample_token


@dataclass
class DecodeSettings:
    max_new_tokens: int = 256
    sampling: SamplingParams = field(default_factory=SamplingParams)
    node_budget: int = 8
    eos_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InvalidSettingError(f"max-new-tokens must be an integer >= 1, got {self.max_new_tokens}")
        if not isinstance(self.node_budget, int) or not 0 <= self.node_budget <= 1024:
            raise InvalidSettingError(f"node budget must be an integer in [0, 1024], got {self.node_budget}")
        if any(not s for s in self.stop_strings):
            raise InvalidSettingError("stop strings must be non-empty")


@dataclass
class DecodeStats:
    """Counters of one request. Times are seconds of wall clock (`time.perf_counter`)."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    target_forwards: int = 0  # prefill included
    drafter_forwards: int = 0
    accepted_lengths: list[int] = field(default_factory=list)  # draft tokens kept per verify
    tree_sizes: list[int] = field(default_factory=list)  # draft nodes sent per verify
    draft_s: list[float] = field(default_factory=list)  # drafter time per iteration
    target_s: list[float] = field(default_factory=list)  # target time per iteration (verify + accept)
    prefill_s: float = 0.0
    wall_s: float = 0.0
    stop_reason: str = ""


def cache_slots_for(committed_tokens: int, node_budget: int) -> int:
    """KV slots for that many committed tokens, then the root and a full tree of `node_budget`
    nodes in the last verification (and one spare)."""
    return committed_tokens + node_budget + 2


def cache_slots_needed(prompt_tokens: int, settings: DecodeSettings, context: int) -> int:
    """KV slots a request can need: its committed tokens never pass the context."""
    return cache_slots_for(min(prompt_tokens + settings.max_new_tokens, context), settings.node_budget)


class StopChecker:
    """Decides, token by token, whether generation ends (EOS, length, stop string, context)."""

    def __init__(self, settings: DecodeSettings, decode: Callable[[list[int]], str] | None) -> None:
        if settings.stop_strings and decode is None:
            raise InvalidSettingError("stop strings need a tokenizer to decode text")
        self.settings = settings
        self.decode = decode
        self._window = max((len(s) for s in settings.stop_strings), default=0) + 8

    def reason(self, generated: list[int]) -> str | None:
        """Why generation stops after the last token of `generated`, or None to go on."""
        s = self.settings
        if generated[-1] in s.eos_token_ids:
            return "eos"
        if s.stop_strings:
            tail = self.decode(generated[-self._window :])
            before = self.decode(generated[-self._window : -1])
            if any(stop in tail and stop not in before for stop in s.stop_strings):
                return "stop_string"
        if len(generated) >= s.max_new_tokens:
            return "length"
        return None


@dataclass
class DraftedStep:
    """What one iteration sends to the target: the root (newest committed token) and the tree."""

    root: int
    tree: DraftTree


class RequestDecoder:
    """One request's decoding state, advanced one iteration at a time.

    The same steps serve a request alone (`speculative_decode`) and many requests whose trees
    are verified together in one target forward (`serving.scheduler`): `draft` proposes, the
    caller verifies, `accept` keeps a path and reports the new tokens. So a request's tokens
    never depend on which other requests it ran beside.
    """

    def __init__(
        self,
        runner: TargetRunner,
        drafter: Drafter,
        prompt: list[int],
        settings: DecodeSettings,
        decode: Callable[[list[int]], str] | None = None,
    ) -> None:
        self.runner = runner
        self.drafter = drafter
        self.prompt = prompt
        self.settings = settings
        self.stats = DecodeStats(prompt_tokens=len(prompt))
        self.stopper = StopChecker(settings, decode)
        self.generator = None if settings.sampling.greedy else settings.sampling.generator()
        self.generated: list[int] = []
        self.sequence = list(prompt)
        self.stop: str | None = None
        self._drafter_forwards_before = drafter.forwards
        self._t_start = 0.0
        self._pending: tuple[DraftedStep, float, float] | None = None  # the step in flight, its times

    @property
    def done(self) -> bool:
        return self.stop is not None

    def prefill(self) -> list[int]:
        """Run the prompt, sample the first token, start the drafter; returns [first token]."""
        s = self.settings
        capacity = cache_slots_needed(len(self.prompt), s, self.runner.context_limit)
        self._t_start = time.perf_counter()
        pre = self.runner.prefill(self.prompt, capacity, capture=self.drafter.needs_features)
        first = sample_token(pre.logits[0], s.sampling, self.generator)
        self.stats.prefill_s = time.perf_counter() - self._t_start
        self.generated.append(first)
        self.sequence.append(first)
        self.stop = self.stopper.reason(self.generated)
        self.drafter.begin(PrefillFeedback(self.prompt, pre.features, first, capacity))
        return [first]

    def _max_depth(self) -> int:
        """A deeper node could only produce tokens past max-new-tokens or the context window."""
        s, context = self.settings, self.runner.context_limit
        return min(s.max_new_tokens - len(self.generated) - 1, context - len(self.sequence) - 1)

    def proposal_budget(self, budget: int | None = None) -> int:
        """The node budget `draft(budget)` asks the drafter for now; 0 when it drafts nothing."""
        if self.stop is not None or len(self.sequence) >= self.runner.context_limit or self._max_depth() <= 0:
            return 0
        return self.settings.node_budget if budget is None else min(budget, self.settings.node_budget)

    def draft(
        self, budget: int | None = None, proposed: DraftTree | None = None, proposed_s: float = 0.0
    ) -> DraftedStep | None:
        """The next tree to verify, or None when generation has ended (`stop` says why).
        `budget` (at most the settings' node budget) lets a server shrink trees as its batch grows;
        `proposed` is a tree the drafter already made for `proposal_budget(budget)` in a batch
        with other requests (taking `proposed_s` seconds)."""
        if self.stop is not None:
            return None
        if len(self.sequence) >= self.runner.context_limit:
            self.stop = "context"
            return None
        max_depth = self._max_depth()
        t0 = time.perf_counter() - proposed_s
        budget = self.proposal_budget(budget)
        if proposed is not None:
            tree = proposed
        else:
            tree = self.drafter.propose(self.sequence, budget) if budget > 0 else DraftTree()
        tree.validate(budget)
        tree = tree.truncated_to_depth(max_depth)
        step = DraftedStep(self.sequence[-1], tree)
        self._pending = (step, t0, time.perf_counter())
        return step

    def accept(self, verified: TargetStep, verify_s: float | None = None) -> list[int]:
        """Apply the acceptance rule to the target's verification of the drafted step, commit the
        kept path, tell the drafter; returns the new tokens (cut where generation stops).
        `verify_s`: the verify forward's time when the caller measured it (a batch's forward
        is shared; the time since this request's draft would also count the others' work)."""
        (drafted, t0, t1), self._pending = self._pending, None
        t_accept = time.perf_counter()
        tree, root, sampling = drafted.tree, drafted.root, self.settings.sampling
        if sampling.greedy:
            acc = accept_greedy(tree, verified.logits)
        else:
            acc = accept_sampling(tree, verified.logits, sampling, self.generator)
        start = self.runner.length
        self.runner.commit(acc.path)
        t2 = time.perf_counter()
        accepted = [tree.tokens[i - 1] for i in acc.path[1:]]
        new = []
        for tok in accepted + [acc.next_token]:
            self.generated.append(tok)
            self.sequence.append(tok)
            new.append(tok)
            self.stop = self.stopper.reason(self.generated)
            if self.stop is not None:
                break
        stats = self.stats
        stats.accepted_lengths.append(min(len(acc.path) - 1, len(new)))  # draft tokens kept in the output
        stats.tree_sizes.append(len(tree))
        stats.target_s.append(t2 - t1 if verify_s is None else verify_s + (t2 - t_accept))
        t3 = time.perf_counter()
        if self.stop is None:
            self.drafter.observe(_feedback(tree, acc.path, root, acc.next_token, verified, start))
        stats.draft_s.append((t1 - t0) + (time.perf_counter() - t3))  # propose + observe
        return new

    def finish(self) -> DecodeStats:
        """Close the request's counters (call once generation has ended)."""
        stats = self.stats
        stats.stop_reason = self.stop or "cancelled"
        stats.new_tokens = len(self.generated)
        stats.target_forwards = self.runner.forwards
        stats.drafter_forwards = self.drafter.forwards - self._drafter_forwards_before
        stats.wall_s = time.perf_counter() - self._t_start
        return stats


def speculative_decode(
    runner: TargetRunner,
    drafter: Drafter,
    prompt: list[int],
    settings: DecodeSettings,
    decode: Callable[[list[int]], str] | None = None,
) -> Iterator[list[int]]:
    """Yield accepted tokens chunk by chunk; the generator's return value is the DecodeStats."""
    request = RequestDecoder(runner, drafter, prompt, settings, decode)
    yield request.prefill()
    while (drafted := request.draft()) is not None:
        verified = runner.verify(drafted.root, drafted.tree, capture=drafter.needs_features)
        yield request.accept(verified)
    return request.finish()


def _feedback(tree: DraftTree, path: list[int], root: int, next_token: int, step: TargetStep, start: int) -> VerifyFeedback:
    """Package what the verification revealed for the drafter (row j of `step` is verify index j)."""
    last = path[-1]
    off_path = [i for i, p in enumerate(tree.parents) if p + 1 == last]
    return VerifyFeedback(
        tokens=[root] + [tree.tokens[i - 1] for i in path[1:]],
        start_position=start,
        features=None if step.features is None else step.features[path],
        logits=step.logits[path],
        next_token=next_token,
        accepted_nodes=[i - 1 for i in path[1:]],
        rejected_node=off_path[0] if off_path else None,
    )
