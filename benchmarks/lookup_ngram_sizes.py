"""Prompt lookup on SmolLM2-135M: which n-gram sizes pay off on this CPU (run once, 2026-11-28).

Committed verbatim as run (from /tmp/t/lookup_xp.py); output in results/lookup_ngram_sizes.txt.
Run from the repository root: .venv/bin/python benchmarks/lookup_ngram_sizes.py
"""
import sys
sys.path.insert(0, '/work/main/benchmarks')
from specblock import SpecGenerator
from specblock.drafters.lookup import LookupDrafter
from engine_speed import load_prompts
from pathlib import Path
prompts = load_prompts(Path('/work/shared/data/eval/spec_bench_question.jsonl'), 2)
base = SpecGenerator.load('smollm2-135m', method='vanilla')
configs = {'min1': dict(min_ngram=1), 'min2': dict(min_ngram=2), 'min3': dict(min_ngram=3, max_ngram=4)}
gens = {}
for k, kw in configs.items():
    g = SpecGenerator.load('smollm2-135m', method='lookup'); g.drafter = LookupDrafter(**kw); gens[k] = g
tot = {k: [0, 0, 0.0] for k in ['vanilla', *configs]}
for cat, text in prompts:
    ids = base.tokenizer.encode(text)
    for k, g in [('vanilla', base), *gens.items()]:
        r = g.generate(input_ids=ids, max_new_tokens=128)
        tot[k][0] += r.new_tokens; tot[k][1] += r.iterations; tot[k][2] += r.wall_s
for k, (n, it, w) in tot.items():
    print(k, f"tau {n/it:.2f} tok/s {n/w:.2f} speedup {(n/w)/(tot['vanilla'][0]/tot['vanilla'][2]):.2f}")
