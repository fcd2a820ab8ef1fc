"""`specblock bench`: Spec-Bench style speed evaluation of several methods on one target."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from specblock.cli.common import err, progress_reporter, user_errors
from specblock.errors import InvalidSettingError
from specblock.models.registry import DEFAULT_TARGET

OUT = Path("bench_results")


def bench(
    target: Annotated[str, typer.Option(help="Registry name or local model directory.")] = DEFAULT_TARGET,
    methods: Annotated[
        str,
        typer.Option(
            help="Comma list, vanilla first; NAME or NAME@BUDGET (nodes or auto), e.g. vanilla,lookup,specblock@59."
        ),
    ] = "vanilla,lookup",
    data: Annotated[Path | None, typer.Option(help="Spec-Bench format question file (JSON lines).")] = None,
    per_category: Annotated[int, typer.Option(help="First N questions of each category.")] = 5,
    runs: Annotated[int, typer.Option(help="Repeat the whole benchmark R times (mean ± std over runs).")] = 1,
    temperature: Annotated[float, typer.Option(help="0 = greedy (outputs checked against vanilla).")] = 0.0,
    max_new_tokens: Annotated[int, typer.Option(help="Most new tokens per turn.")] = 256,
    out: Annotated[Path, typer.Option(help="Output directory: results.jsonl, summary.json, report.md, PNGs.")] = OUT,
    drafters: Annotated[str, typer.Option(help="Checkpoints: specblock=DIR,eagle3=DIR,draft-model=NAME|DIR.")] = "",
    seed: Annotated[int, typer.Option(help="Base seed for sampling (T > 0).")] = 0,
    compare: Annotated[
        str | None, typer.Option(help="Methods for the paired test, A,B (default: specblock vs eagle3 when both ran).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="auto (bf16 where the CPU has AMX or AVX512-BF16, and on CUDA; else float32) | float32 | bfloat16 | float16 | int8 (int8 weights, CPU)")] = "auto",
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N | auto")] = "cpu",
    adapt: Annotated[
        bool, typer.Option(help="Adapt the specblock / eagle3 drafters online across the benchmark's requests.")
    ] = False,
    references: Annotated[
        str, typer.Option(help="Reference engines timed on the same prompts (run 1): hf-generate, llama.cpp (the Python "
                 "binding), llama.cpp-server (scripts/build_llama_cpp.sh's llama-server, over HTTP), llama.cpp-server-ngram "
                 "(its n-gram lookup), llama.cpp-server-eagle3 (its EAGLE-3 with our EAGLE-3 drafter exported to GGUF).")
    ] = "",
) -> None:
    """Run every method on the same prompts, interleaved and resumable; write a report with tables and plots."""
    from specblock.api import parse_device
    from specblock.bench.methods import parse_drafters, parse_methods
    from specblock.bench.prompts import load_prompts
    from specblock.bench.runner import REFERENCES, run_bench
    from specblock.bench.summary import write_summary

    with user_errors():
        if data is None:
            raise InvalidSettingError("give --data FILE: a Spec-Bench format question file (spec_bench_question.jsonl)")
        specs = parse_methods(methods)  # every check that needs no model, before the load
        parse_drafters(drafters)
        load_prompts(data, per_category)
        pairs = _pairs(compare, [s.spec for s in specs])
        engines = [r.strip() for r in references.split(",") if r.strip()]
        unknown = [r for r in engines if r not in REFERENCES]
        if unknown:
            raise InvalidSettingError(f"unknown reference engine {unknown[0]!r}; use {', '.join(REFERENCES)}")
        device = parse_device(device)
        command = "specblock bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        with progress_reporter() as report:
            run_bench(
                target, methods, data, per_category, runs, temperature, max_new_tokens, out, seed, drafters, report,
                dtype=dtype, device=device, command=command, adapt=adapt,
                references=engines,
            )  # fmt: skip
        summary = write_summary(out, pairs)
    err.print(
        f"{len(summary['methods'])} methods on {len(summary['categories']) - 1} categories: report in {out / 'report.md'}"
    )
    for m in summary["methods"]:
        e = summary["table"][m].get("all")
        if e:
            err.print(
                f"  {m:16s} tau {_num(e['tau'])}  {_num(e['tokens_per_s'])} tokens/s  speedup {_num(e['speedup_mean'])}x",
                highlight=False,
            )


def _pairs(text: str | None, methods: list[str]) -> list[tuple[str, str]] | None:
    if text is None:
        return None
    a, comma, b = text.partition(",")
    if not comma or a not in methods or b not in methods or a == b:
        raise InvalidSettingError(f"--compare needs two different methods of --methods, as A,B; got {text!r}")
    return [(a, b)]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
