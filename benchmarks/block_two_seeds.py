"""How many block-2 seeds does SpecBlock need at a node budget? tau (new tokens / target
forwards) when block 2 runs only the best `cap` seeds by score, against every reachable seed,
and the share of the final trees' block-2 nodes that each seed rank supplies.

tau does not depend on timing, so this may run next to other jobs (it uses one thread).
Not a test: it justifies `drafters.specblock.block_two_seeds`'s default cap (budget // K).

    python benchmarks/block_two_seeds.py --budget 16 --caps all,8,6,4,2,1,0 --out DIR
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch
from benchmarks_common import run_header

import specblock.drafters.specblock as specblock_drafting
from specblock.api import SpecGenerator

CATEGORIES = ("writing", "coding", "math_reasoning", "rag", "translation", "qa", "summarization", "roleplay",
              "extraction", "stem", "reasoning", "humanities")  # fmt: skip


class SeedProbe:
    """Stands in for `block_two_seeds`: applies the cap under test and records, per drafted
    tree, which seed ranks ended up with descendants among the tree's nodes."""

    def __init__(self, choose, cap: int | None) -> None:
        self.choose = choose  # the real rule, given the cap under test
        self.cap = cap  # None: every reachable seed; 0: no block 2
        self.calls = self.seeds = self.block_two_nodes = self.tree_nodes = 0
        self.nodes_by_rank: collections.Counter = collections.Counter()
        self._last = None

    def __call__(self, pool, seeds, budget, k, cap=None):
        chosen = [] if self.cap == 0 else self.choose(pool, seeds, budget, k, cap=self.cap or max(1, len(seeds)))
        if chosen:
            self.calls += 1
            self.seeds += len(chosen)
            self._last = (pool, chosen, len(pool), budget)
        return chosen

    def tree_done(self) -> None:
        """Attribute the final tree's block-2 nodes to the rank of the seed they hang under."""
        if self._last is None:
            return
        pool, chosen, block_one_nodes, budget = self._last
        self._last = None
        rank = {node: r for r, (node, _) in enumerate(sorted(chosen, key=lambda s: -pool.scores[s[0]]))}
        kept = pool.best(budget)
        self.tree_nodes += len(kept)
        for node in kept:
            if node < block_one_nodes:
                continue
            self.block_two_nodes += 1
            while node not in rank:  # up to its seed (through a block-1 node it may have merged into)
                node = pool.parents[node]
            self.nodes_by_rank[rank[node]] += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--drafter", default=None, help="a SpecBlock checkpoint (default: the shipped one)")
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--caps", default="all,8,6,4,2,1,0", help="'all' = every reachable seed; 0 = no block 2")
    ap.add_argument("--data", default="../shared/data/eval/spec_bench_question.jsonl")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    questions = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    prompts = [next(q["turns"][0] for q in questions if q["category"] == c) for c in CATEGORIES]
    gen = SpecGenerator.load(args.target, "specblock", drafter=args.drafter, node_budget=args.budget, dtype="auto")
    original = specblock_drafting.block_two_seeds
    tree = specblock_drafting.SpecBlockDrafter._tree

    def traced_tree(self, hidden, heads, budget):
        out = tree(self, hidden, heads, budget)
        probe.tree_done()
        return out

    specblock_drafting.SpecBlockDrafter._tree = traced_tree
    rows = []
    for cap in args.caps.split(","):
        probe = SeedProbe(original, None if cap == "all" else int(cap))
        specblock_drafting.block_two_seeds = probe  # the drafter looks the rule up at each tree
        new = forwards = 0
        for prompt in prompts:
            result = gen.generate(messages=[{"role": "user", "content": prompt}], max_new_tokens=args.max_new_tokens)
            new, forwards = new + result.new_tokens, forwards + result.iterations
        row = {"cap": cap, "tau": round(new / forwards, 4), "new_tokens": new, "target_forwards": forwards,
               "seeds_per_block_two": round(probe.seeds / max(1, probe.calls), 2),
               "block_two_share_of_tree_nodes": round(probe.block_two_nodes / max(1, probe.tree_nodes), 4),
               "block_two_nodes_by_seed_rank": [probe.nodes_by_rank[r] for r in range(max(probe.nodes_by_rank, default=-1) + 1)]}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    specblock_drafting.block_two_seeds = original
    args.out.mkdir(parents=True, exist_ok=True)
    header = run_header() | {
        "target": args.target,
        "budget": args.budget,
        "prompts": f"the first Spec-Bench question of {', '.join(CATEGORIES)}",
    }
    (args.out / f"block_two_seeds_{args.budget}.json").write_text(json.dumps(header | {"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
