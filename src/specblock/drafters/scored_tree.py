"""A pool of scored candidate nodes, merged by (parent, token) and pruned to a node budget.

Both neural drafters grow more candidates than the verifier should see and keep the best
`budget` by cumulative log-probability. A child's score never exceeds its parent's (it adds a
log-probability <= 0), so taking nodes in score order, parents first on ties, keeps the
selection closed under ancestors without ever exceeding the budget (design §6 step 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specblock.tree import DraftTree

ROOT = -1


@dataclass
class CandidatePool:
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    _index: dict[tuple[int, int], int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, token: int, parent: int, score: float) -> int:
        """Add a node (or merge into the existing one with the same parent and token)."""
        key = (parent, int(token))
        if key in self._index:
            node = self._index[key]
            self.scores[node] = max(self.scores[node], score)
            return node
        self.tokens.append(int(token))
        self.parents.append(parent)
        self.scores.append(float(score))
        self.depths.append(1 if parent == ROOT else self.depths[parent] + 1)
        self._index[key] = len(self.tokens) - 1
        return len(self.tokens) - 1

    def best(self, budget: int, max_depth: int | None = None) -> list[int]:
        """Indices of the `budget` best nodes whose ancestors are all kept (score order)."""
        order = sorted(range(len(self)), key=lambda i: (-self.scores[i], self.depths[i], i))
        kept: set[int] = set()
        out: list[int] = []
        for i in order:
            if len(out) >= budget:
                break
            if max_depth is not None and self.depths[i] > max_depth:
                continue
            if self.parents[i] == ROOT or self.parents[i] in kept:
                kept.add(i)
                out.append(i)
        return out

    def to_tree(self, budget: int, max_depth: int | None = None) -> DraftTree:
        chosen = sorted(self.best(budget, max_depth), key=lambda i: (self.depths[i], i))
        new_index: dict[int, int] = {}
        tree = DraftTree()
        for i in chosen:
            parent = self.parents[i]
            new_index[i] = tree.add(self.tokens[i], ROOT if parent == ROOT else new_index[parent], self.scores[i])
        return tree
