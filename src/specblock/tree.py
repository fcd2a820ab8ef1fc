"""Draft trees: the drafter's proposal and the attention layout the verifier needs.

A tree is a flat list of draft nodes in topological order (a parent always comes before
its children). `parents[i] == -1` hangs node i off the root, the last token already
accepted but not yet run through the target. For verification the root is prepended as
index 0, so draft node i becomes verify index i + 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DraftTree:
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, token: int, parent: int, score: float = 0.0) -> int:
        """Append a node under `parent` (-1 = root) and return its index."""
        if not -1 <= parent < len(self.tokens):
            raise ValueError(f"parent {parent} does not precede node {len(self.tokens)}")
        self.tokens.append(int(token))
        self.parents.append(int(parent))
        self.scores.append(float(score))
        return len(self.tokens) - 1

    def depths(self) -> list[int]:
        """Depth of each draft node: 1 for children of the root."""
        out: list[int] = []
        for p in self.parents:
            out.append(1 if p < 0 else out[p] + 1)
        return out

    def validate(self, budget: int) -> None:
        """Raise if the tree exceeds the budget, is not topological, or repeats a (parent, token)."""
        n = len(self.tokens)
        if not (len(self.parents) == len(self.scores) == n):
            raise ValueError("tokens, parents and scores must have the same length")
        if n > budget:
            raise ValueError(f"draft tree has {n} nodes, over the budget of {budget}")
        seen = set()
        for i, (tok, par) in enumerate(zip(self.tokens, self.parents)):
            if not -1 <= par < i:
                raise ValueError(f"node {i} has parent {par}: parents must come first")
            if (par, tok) in seen:
                raise ValueError(f"node {i} repeats token {tok} under parent {par}")
            seen.add((par, tok))

    def truncated_to_depth(self, max_depth: int) -> "DraftTree":
        """The subtree of nodes at depth <= max_depth (indices renumbered, order kept)."""
        if max_depth <= 0:
            return DraftTree()
        depths = self.depths()
        if max(depths, default=0) <= max_depth:
            return self
        new_index: dict[int, int] = {}
        out = DraftTree()
        for i, d in enumerate(depths):
            if d <= max_depth:
                par = self.parents[i]
                new_index[i] = out.add(self.tokens[i], -1 if par < 0 else new_index[par], self.scores[i])
        return out


def verify_children(tree: DraftTree) -> list[list[int]]:
    """Children of every verify index (0 = root), in proposal order."""
    children: list[list[int]] = [[] for _ in range(len(tree) + 1)]
    for i, p in enumerate(tree.parents):
        children[p + 1].append(i + 1)
    return children


def verify_layout(tree: DraftTree, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestor mask [n+1, n+1] (True = may attend; self and ancestors) and depths [n+1] with the root first."""
    n = len(tree) + 1
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[0, 0] = True
    depth = [0] * n
    for i, p in enumerate(tree.parents, start=1):
        mask[i] = mask[p + 1]
        mask[i, i] = True
        depth[i] = depth[p + 1] + 1
    return mask.to(device), torch.tensor(depth, dtype=torch.long, device=device)


def verify_paths(tree: DraftTree, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n+1, D] verify indices of each verify row's ancestors by depth (the root at depth 0,
    the row itself at its own depth), -1 past the row's depth; D = the tree's depth + 1."""
    rows: list[list[int]] = [[0]]
    for i, p in enumerate(tree.parents, start=1):
        rows.append(rows[p + 1] + [i])
    depth = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (depth - len(r)) for r in rows], dtype=torch.long, device=device)


class TrieBuilder:
    """Builds a tree by inserting token paths, merging shared prefixes (used by n-gram drafters)."""

    def __init__(self, budget: int) -> None:
        self.tree = DraftTree()
        self.budget = budget
        self._index: dict[tuple[int, int], int] = {}

    @property
    def full(self) -> bool:
        return len(self.tree) >= self.budget

    def insert(self, path: list[int], score: float = 0.0) -> None:
        """Add `path` below the root; nodes already present are reused, the budget is respected."""
        parent = -1
        for tok in path:
            key = (parent, tok)
            node = self._index.get(key)
            if node is None:
                if self.full:
                    return
                node = self.tree.add(tok, parent, score)
                self._index[key] = node
            parent = node
