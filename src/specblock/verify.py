"""Acceptance rules: which draft path the target keeps, and the token it adds after it.

Greedy: a child is accepted iff its token is the target's argmax at its parent.
Sampling (lossless for deterministic draft candidates, design §3): at a node with target
distribution p, try the children in order; accept child c with probability p(c); on
rejection set p(c) = 0 and renormalise; if no child is accepted, sample from what is left.
The token that ends the iteration therefore always has the target's exact distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specblock.sampling import SamplingParams, target_probs
from specblock.tree import DraftTree, verify_children


@dataclass
class Acceptance:
    path: list[int]  # verify indices kept, root (0) first
    next_token: int  # the target's own token after the path (bonus or correction)


def accept_greedy(tree: DraftTree, logits: torch.Tensor) -> Acceptance:
    """Longest path whose every token equals the target's argmax at its parent."""
    argmax = logits.argmax(dim=-1).tolist()
    children = verify_children(tree)
    node, path = 0, [0]
    while True:
        want = argmax[node]
        nxt = next((c for c in children[node] if tree.tokens[c - 1] == want), None)
        if nxt is None:
            return Acceptance(path=path, next_token=want)
        node = nxt
        path.append(node)


def accept_sampling(
    tree: DraftTree, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> Acceptance:
    """Recursive rejection over deterministic candidates; reproduces the target distribution."""
    children = verify_children(tree)
    node, path = 0, [0]
    while True:
        probs = target_probs(logits[node].cpu(), params)  # the generator lives on the CPU
        accepted = None
        for child in children[node]:
            tok = tree.tokens[child - 1]
            p = float(probs[tok])
            if p > 0.0 and float(torch.rand((), generator=generator)) < p:
                accepted = child
                break
            if p > 0.0:
                probs[tok] = 0.0
                rest = float(probs.sum())
                if rest <= 0.0:  # p(c) was 1 up to rounding: c is the only possible token
                    accepted = child
                    break
                probs = probs / rest
        if accepted is None:
            token = int(torch.multinomial(probs, 1, generator=generator))
            return Acceptance(path=path, next_token=token)
        node = accepted
        path.append(node)


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from a single logits row: argmax when greedy, else a draw from the target distribution."""
    if params.greedy:
        return int(logits.argmax())
    return int(torch.multinomial(target_probs(logits.cpu(), params), 1, generator=generator))
