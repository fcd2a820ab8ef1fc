"""tau at a node budget when block 2 runs only the best `cap` seeds (development; deterministic)."""
import json, sys
import torch
torch.set_num_threads(1)
from specblock.api import SpecGenerator
from specblock.drafters.scored_tree import CandidatePool, ROOT
budget = int(sys.argv[1]); caps = [int(c) for c in sys.argv[2].split(',')]
per_cat = int(sys.argv[3]) if len(sys.argv) > 3 else 1
q = [json.loads(l) for l in open('/work/shared/data/eval/spec_bench_question.jsonl')]
cats = ['writing', 'coding', 'math_reasoning', 'rag', 'translation', 'qa', 'summarization', 'roleplay', 'extraction', 'stem', 'reasoning', 'humanities']
prompts = [x['turns'][0] for c in cats for x in [y for y in q if y['category'] == c][:per_cat]]
gen = SpecGenerator.load("smollm2-135m", "specblock", node_budget=budget, dtype="auto")
D = type(gen.drafter)
state = {"cap": None, "seeds": 0, "calls": 0}
def _tree(self, hidden, heads, budget):
    pool = CandidatePool()
    seeds = self._grow(pool, [ROOT], *(None if h is None else h[None] for h in heads))
    if self.blocks == 2 and budget > self.k:
        reachable = set(pool.best(budget))
        seeds = [(n, s) for n, s in seeds if n in reachable]
        cap = state["cap"]
        if cap == -1:
            seeds = []
        elif cap is not None and len(seeds) > cap:
            keep = set(sorted(seeds, key=lambda ns: -pool.scores[ns[0]])[:cap])
            seeds = [x for x in seeds if x in keep]
        if seeds:
            state["seeds"] += len(seeds); state["calls"] += 1
            self._block_two(pool, seeds, hidden)
    return pool.to_tree(budget)
D._tree = _tree
for cap in caps:
    state.update(cap=None if cap == 0 else cap, seeds=0, calls=0)
    new = fw = 0; outs = []
    for p in prompts:
        r = gen.generate(messages=[{"role": "user", "content": p}], max_new_tokens=128)
        new += r.new_tokens
        fw += r.iterations
        outs.append(r.text)
    print(f"budget {budget} cap {cap or 'none'}: tau {new/fw:.3f} ({new} tokens, {fw} forwards), seeds per block 2 {state['seeds']/max(1,state['calls']):.1f}", flush=True)
