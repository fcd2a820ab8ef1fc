"""Load benchmark of `specblock serve`: aggregate tokens/s, time to first token and per-token
latency (p50, p99) at 1, 2, 4, 8 concurrent streaming clients, per method, plus
`specblock generate`'s per-token latency on the same prompts for the single-client check.

One server process per method is started first (they wait idle while the other runs); the
levels and methods are interleaved within each run. The clients are threads of this process
(an SSE reader each: little CPU next to the server's).

    .venv/bin/python benchmarks/serve_load.py --target smollm2-135m --methods vanilla,specblock \
        --clients 1,2,4,8 --requests 16 --max-tokens 128 --runs 2 --out benchmarks/results/serve_zen5

Writes serve_load.json (every request) and serve_load.md (the table) under --out.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks_common import run_header  # noqa: E402

from specblock.bench.prompts import load_prompts  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval" / "spec_bench_question.jsonl"


def start_server(target: str, method: str, port: int, max_batch: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "specblock.cli", "serve", "--target", target, "--method", method, "--port", str(port),
           "--max-batch", str(max_batch), "--queue", "64", "--served-model-name", "bench"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 600
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the {method} server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)


def one_request(url: str, prompt: str, max_tokens: int) -> dict:
    """Stream one chat completion; token arrival times come from the chunks' running token count.
    Only the last chunk is parsed as JSON: the clients share the server's CPU here, so they
    do as little as they can."""
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}  # fmt: skip
    t0 = time.perf_counter()
    first = last = None
    tokens, summary = 0, {}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if '"pieces"' in line:  # a chunk with text
                last = time.perf_counter()
                first = first or last
            elif '"usage"' in line:
                chunk = json.loads(line[6:])
                tokens, summary = chunk["usage"]["completion_tokens"], chunk["specblock"]
    return {"ttft_s": first - t0, "wall_s": last - t0, "tokens": tokens,
            "tpot_s": (last - first) / (tokens - 1) if tokens > 1 else None,
            "tau": summary.get("tau"), "mean_batch_size": summary.get("mean_batch_size")}  # fmt: skip


def run_level(url: str, prompts: list[str], clients: int, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        rows = list(pool.map(lambda p: one_request(url, p, max_tokens), prompts))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "tokens": sum(r["tokens"] for r in rows), "requests": rows}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def generate_latency(target: str, method: str, prompts: list[str], max_tokens: int) -> list[float]:
    """`specblock generate`'s decode time per token after the first, through the Python API."""
    from specblock import SpecGenerator

    gen = SpecGenerator.load(target, method=method)
    out = []
    for p in prompts:
        r = gen.generate(messages=[{"role": "user", "content": p}], max_new_tokens=max_tokens)
        if r.new_tokens > 1:
            out.append((r.wall_s - r.prefill_s) / (r.new_tokens - 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--methods", default="vanilla,specblock")
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=16, help="requests per level (Spec-Bench questions)")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    methods, levels = args.methods.split(","), [int(c) for c in args.clients.split(",")]
    questions = load_prompts(args.data, per_category=max(1, -(-args.requests // 6)))
    prompts = [q.turns[0] for q in questions][: args.requests]
    args.out.mkdir(parents=True, exist_ok=True)
    servers, urls = {}, {}
    try:
        for i, method in enumerate(methods):
            port = 8700 + i
            servers[method] = start_server(args.target, method, port, args.max_batch, args.out / f"server_{method}.log")
            urls[method] = f"http://127.0.0.1:{port}"
            run_level(urls[method], prompts[:2], 2, 16)  # warm-up: first-call allocations, thread pools
        results = []
        for run in range(args.runs):
            for clients in levels:
                for method in methods:
                    level = run_level(urls[method], prompts, clients, args.max_tokens)
                    results.append({"run": run, "method": method, "clients": clients, **level})
                    print(f"run {run} {method:10s} clients {clients}: {level['tokens'] / level['wall_s']:.1f} tokens/s",
                          flush=True)
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(60)
    reference = {m: generate_latency(args.target, m, prompts, args.max_tokens) for m in methods}
    report = {**run_header(), "settings": vars(args) | {"data": str(args.data), "out": str(args.out)},
              "results": results, "generate_tpot_s": reference}  # fmt: skip
    (args.out / "serve_load.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "serve_load.md").write_text(table(report, methods, levels))
    print(table(report, methods, levels))


def table(report: dict, methods: list[str], levels: list[int]) -> str:
    lines = [f"`{report['command']}`, {report['date']}, {report['cpu']}", "",
             "| method | clients | aggregate tokens/s | vs 1 client | TTFT p50 ms | per-token p50 ms | per-token p99 ms | "
             "tau | mean batch |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for method in methods:
        base = None
        for clients in levels:
            runs = [r for r in report["results"] if r["method"] == method and r["clients"] == clients]
            speed = statistics.mean(r["tokens"] / r["wall_s"] for r in runs)
            base = base or speed
            reqs = [q for r in runs for q in r["requests"]]
            tpot = [q["tpot_s"] for q in reqs if q["tpot_s"] is not None]
            taus = [q["tau"] for q in reqs if q["tau"]]
            batch = [q["mean_batch_size"] for q in reqs if q["mean_batch_size"]]
            spread = statistics.stdev(r["tokens"] / r["wall_s"] for r in runs) if len(runs) > 1 else 0.0
            lines.append(
                f"| {method} | {clients} | {speed:.1f} ± {spread:.1f} | {speed / base:.2f}x | "
                f"{1000 * percentile([q['ttft_s'] for q in reqs], 50):.0f} | {1000 * percentile(tpot, 50):.1f} | "
                f"{1000 * percentile(tpot, 99):.1f} | {statistics.mean(taus):.2f} | {statistics.mean(batch):.2f} |"
            )
    lines.append("")
    for method in methods:
        gen = report["generate_tpot_s"][method]
        one = [q["tpot_s"] for r in report["results"] if r["method"] == method and r["clients"] == 1
               for q in r["requests"] if q["tpot_s"] is not None]  # fmt: skip
        g50, s50 = percentile(gen, 50), percentile(one, 50)
        lines.append(f"- {method}: single-client per-token p50 {1000 * s50:.1f} ms through the server vs "
                     f"{1000 * g50:.1f} ms in `specblock generate` ({100 * (s50 / g50 - 1):+.1f}%)")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
