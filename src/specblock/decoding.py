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


def speculative_decode(
    runner: TargetRunner,
    drafter: Drafter,
    prompt: list[int],
    settings: DecodeSettings,
    decode: Callable[[list[int]], str] | None = None,
) -> Iterator[list[int]]:
    """Yield accepted tokens chunk by chunk; the generator's return value is the DecodeStats."""
    stats = DecodeStats(prompt_tokens=len(prompt))
    stopper = StopChecker(settings, decode)
    sampling = settings.sampling
    generator = None if sampling.greedy else sampling.generator()
    budget = settings.node_budget
    # committed tokens never exceed the context; a verify adds the root and up to `budget` nodes
    capacity = min(len(prompt) + settings.max_new_tokens, runner.context_limit) + budget + 2
    drafter_forwards_before = drafter.forwards
    t_start = time.perf_counter()

    pre = runner.prefill(prompt, capacity, capture=drafter.needs_features)
    first = sample_token(pre.logits[0], sampling, generator)
    stats.prefill_s = time.perf_counter() - t_start
    generated = [first]
    sequence = prompt + [first]
    stop = stopper.reason(generated)
    drafter.begin(PrefillFeedback(prompt, pre.features, first, capacity))
    yield [first]

    while stop is None:
        if len(sequence) >= runner.context_limit:
            stop = "context"
            break
        # A deeper node could only produce tokens past max-new-tokens or the context window.
        max_depth = min(settings.max_new_tokens - len(generated) - 1, runner.context_limit - len(sequence) - 1)
        t0 = time.perf_counter()
        tree = drafter.propose(sequence, budget) if budget > 0 and max_depth > 0 else DraftTree()
        tree.validate(budget)
        tree = tree.truncated_to_depth(max_depth)
        t1 = time.perf_counter()
        root = sequence[-1]
        step = runner.verify(root, tree, capture=drafter.needs_features)
        if sampling.greedy:
            acc = accept_greedy(tree, step.logits)
        else:
            acc = accept_sampling(tree, step.logits, sampling, generator)
        start = runner.length
        runner.commit(acc.path)
        t2 = time.perf_counter()

        accepted = [tree.tokens[i - 1] for i in acc.path[1:]]
        new = []
        for tok in accepted + [acc.next_token]:
            generated.append(tok)
            sequence.append(tok)
            new.append(tok)
            stop = stopper.reason(generated)
            if stop is not None:
                break
        stats.accepted_lengths.append(min(len(acc.path) - 1, len(new)))  # draft tokens kept in the output
        stats.tree_sizes.append(len(tree))
        stats.target_s.append(t2 - t1)
        t3 = time.perf_counter()
        if stop is None:
            drafter.observe(_feedback(tree, acc.path, root, acc.next_token, step, start))
        stats.draft_s.append((t1 - t0) + (time.perf_counter() - t3))  # propose + observe
        yield new

    stats.stop_reason = stop
    stats.new_tokens = len(generated)
    stats.target_forwards = runner.forwards
    stats.drafter_forwards = drafter.forwards - drafter_forwards_before
    stats.wall_s = time.perf_counter() - t_start
    return stats


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
