"""Run every method on every prompt, interleaved, and append one row per measurement.

Order: for run r, for each prompt, for each turn, every method back to back on that turn
(vanilla first). MT-bench turn 2 is asked after the method's own turn-1 answer, so each
turn is its own row (`turn` = 1 or 2). Rows already in `results.jsonl` are skipped, which
makes an interrupted benchmark resumable.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from specblock.adapt.drafter import AdaptiveDrafter
from specblock.api import GenerationResult, SpecGenerator, parse_device, parse_dtype
from specblock.bench.machine import machine_description
from specblock.bench.methods import MethodSpec, parse_drafters, parse_methods
from specblock.bench.prompts import Prompt, load_prompts
from specblock.bench.results import (
    SETTINGS,
    ResultsFile,
    check_settings,
    keep_resolved_budgets,
    read_settings,
    write_settings,
)
from specblock.bench.suspension import SuspensionWatch
from specblock.errors import InvalidSettingError, SpecBlockError
from specblock.methods import NEURAL_METHODS
from specblock.target.cpu import cpu_features
from specblock.target.kernels import kernel_plan

Reporter = Callable[[str, int, int], None]
T = TypeVar("T")
WARMUP_PROMPT = "Say hello."
PROGRESS_STAGE = "measuring (question x turn x method x run)"
# What users would run instead: speed rows, run 1 only. The llama.cpp-server ones run its own
# speculative modes on the same GGUF: n-gram lookup, and EAGLE-3 with our exported drafter.
REFERENCES = ("hf-generate", "llama.cpp", "llama.cpp-server", "llama.cpp-server-ngram", "llama.cpp-server-eagle3")
# --spec-draft-n-max for EAGLE-3: llama.cpp's best on the 1.5B on a Zen 4 (1: 0.81x plain llama-server,
# its default 3: 0.68x, 4: 0.60x; benchmarks/results/llama_eagle3_draft_max_qwen2.5-coder-1.5b)
LLAMA_DRAFT_MAX = 1
# What each llama-server row adds to plain llama-server (EAGLE-3's `-md DRAFT.gguf` too); kept in
# the settings, and a resume with other flags for a row already measured is refused.
LLAMA_SERVER_FLAGS = {
    "llama.cpp-server": (),
    "llama.cpp-server-ngram": ("--spec-type", "ngram-simple"),
    "llama.cpp-server-eagle3": ("--spec-type", "draft-eagle3", "--spec-draft-n-max", str(LLAMA_DRAFT_MAX)),
}
MAX_ATTEMPTS = 3  # a row timed across a stop of the process (SIGSTOP) is measured again, at most this often


def measured(watch: SuspensionWatch, measure: Callable[[], T], again: bool = True) -> tuple[T, bool]:
    """`measure()`, run again while the process was stopped during it (`again`, at most
    MAX_ATTEMPTS runs in all); also whether the kept result's timing still spans a stop."""
    for _ in range(MAX_ATTEMPTS):
        mark = watch.mark()
        result = measure()
        stopped = watch.stopped_since(mark)
        if not (stopped and again):
            break
    return result, stopped


def request_seed(seed: int, question_id: object, run: int, turn: int) -> int:
    """A sampling seed derived from (seed, question_id, run, turn): the same for every method."""
    digest = hashlib.sha256(json.dumps([seed, question_id, run, turn]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def build_generators(
    target: str | Path, specs: list[MethodSpec], drafters: dict[str, str], dtype: str, device: str,
    report: Reporter | None = None,
) -> dict[str, SpecGenerator]:  # fmt: skip
    """Load the target once; every method shares its weights (`with_method`)."""
    base = SpecGenerator.load(target, "vanilla", dtype=dtype, device=device, report=report)
    gens = {}
    for s in specs:
        if s.spec == "vanilla":
            gens[s.spec] = base
            continue
        gens[s.spec] = base.with_method(
            s.name, node_budget=s.budget, target_name=str(target),
            drafter=drafters.get(s.drafter_key) if s.name in NEURAL_METHODS else None,
            draft_model=drafters.get("draft-model") if s.name == "draft-model" else None,
        )  # fmt: skip
    return gens


def make_row(
    prompt: Prompt, turn: int, method: str, run: int, r: GenerationResult, reference: list[int] | None
) -> dict:
    """One results row; `equal_to_vanilla` is None when there is no greedy reference."""
    return {
        "category": prompt.category, "label": prompt.label, "question_id": prompt.question_id, "turn": turn,
        "method": method, "run": run, "node_budget": r.node_budget, "prompt_tokens": r.prompt_tokens,
        "new_tokens": r.new_tokens, "iterations": r.iterations, "wall_s": r.wall_s, "prefill_s": r.prefill_s,
        "drafter_forwards": r.drafter_forwards, "mean_tree_nodes": r.mean_tree_nodes, "stop_reason": r.stop_reason,
        "accepted_lengths": r.accepted_lengths, "draft_ms": r.draft_ms, "target_ms": r.target_ms,
        "equal_to_vanilla": None if reference is None else r.token_ids == reference, "token_ids": r.token_ids,
    }  # fmt: skip


def target_kernels(dtype: str, device: str) -> str:
    """The target's kernel choice in words (`KernelPlan.describe`), known before the model loads:
    another choice times and rounds differently, so its rows must not share a report."""
    resolved = parse_device(device)
    return kernel_plan(resolved, parse_dtype(dtype, resolved)).describe()


def rows_to_measure(
    results: ResultsFile, prompts: list[Prompt], specs: list[MethodSpec], runs: int, references: list[str]
) -> int:  # fmt: skip
    """How many rows the bench still has to measure: every method's in every run, each reference
    engine's in run 1. A resumed bench with none left loads nothing (a pipeline passes its
    finished benches in seconds instead of loading the models and starting llama-servers)."""
    turns = [(json.dumps(p.question_id), turn) for p in prompts for turn in range(1, len(p.turns) + 1)]
    keys = [(qid, turn, s.spec, run) for run in range(1, runs + 1) for qid, turn in turns for s in specs]
    keys += [(qid, turn, name, 1) for qid, turn in turns for name in references]
    return sum(1 for key in keys if not results.done(key))


def run_bench(
    target: str | Path,
    methods: str | list[str],
    data: Path,
    per_category: int = 5,
    runs: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 256,
    out: Path = Path("bench"),
    seed: int = 0,
    drafters: dict[str, str] | str | None = None,
    report: Reporter | None = None,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    command: str = "",
    adapt: bool = False,
    references: list[str] | None = None,
) -> dict:
    """Measure and append rows to `out/results.jsonl`; returns the settings (also in `out/settings.json`)."""
    specs = parse_methods(methods)
    drafters = parse_drafters(drafters) if isinstance(drafters, str) or drafters is None else dict(drafters)
    if runs < 1 or max_new_tokens < 1 or temperature < 0:
        raise InvalidSettingError("--runs and --max-new-tokens must be at least 1 and --temperature at least 0")
    prompts = load_prompts(Path(data), per_category)
    out = Path(out)
    settings = {
        "target": str(target), "dtype": dtype, "device": device, "temperature": float(temperature),
        "max_new_tokens": max_new_tokens, "seed": seed, "methods": [s.spec for s in specs], "data": str(data),
        "per_category": per_category, "runs": runs, "drafters": drafters, "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_description(device), "cpu": cpu_features().key(),
        "kernels": target_kernels(dtype, device),
        "turns": "one row per turn; turn 2 follows the method's own turn-1 answer",
        "adapt": adapt, "references": list(references or []),
        "reference_flags": {name: list(LLAMA_SERVER_FLAGS[name]) for name in references or [] if name in LLAMA_SERVER_FLAGS},
    }  # fmt: skip
    check_settings(out, settings)  # before the slow model load
    results = ResultsFile(out)
    finished = (out / SETTINGS).is_file() and not rows_to_measure(results, prompts, specs, runs, references or [])
    if results.rows and finished:
        return read_settings(out)  # finished: no model load, no reference engines; the caller rewrites the report
    gens = build_generators(target, keep_resolved_budgets(specs, results.rows), drafters, dtype, device, report)
    settings["node_budgets"] = {spec: g.node_budget for spec, g in gens.items()}
    settings["dtype_resolved"] = gens["vanilla"].target.dtype_name  # what `auto` chose on this machine
    if adapt:  # every trained drafter keeps learning across the requests (its update time counts)
        for s in specs:
            if s.name in NEURAL_METHODS:
                gens[s.spec].enable_adaptation()
    engines = start_references(references or [], str(target), gens["vanilla"], settings, drafters)  # warmed up inside
    write_settings(out, settings)
    for g in gens.values():
        g.generate(WARMUP_PROMPT, max_new_tokens=8)

    decode = gens["vanilla"].tokenizer.decode
    watch = SuspensionWatch()
    total, done = runs * sum(len(p.turns) for p in prompts) * len(specs), 0
    for run in range(1, runs + 1):
        for prompt in prompts:
            history: dict[str, list[dict]] = {s.spec: [] for s in specs}
            for turn, question in enumerate(prompt.turns, start=1):
                for s in specs:
                    messages = history[s.spec] + [{"role": "user", "content": question}]
                    key = (json.dumps(prompt.question_id), turn, s.spec, run)
                    row = results.get(key)
                    if row is None:
                        seed_r = None if temperature == 0 else request_seed(seed, prompt.question_id, run, turn)
                        gen = gens[s.spec]
                        adaptive = isinstance(gen.drafter, AdaptiveDrafter)  # it learned from the first try: keep it
                        request = partial(gen.generate, messages=messages, max_new_tokens=max_new_tokens,
                                          temperature=temperature, seed=seed_r)  # fmt: skip
                        r, stopped = measured(watch, request, again=not adaptive)
                        reference = None  # greedy outputs are checked token for token against vanilla's
                        if temperature == 0:
                            vanilla_row = results.get((key[0], turn, "vanilla", run))
                            reference = r.token_ids if s.spec == "vanilla" else (vanilla_row or {}).get("token_ids")
                        row = make_row(prompt, turn, s.spec, run, r, reference)
                        if adaptive:
                            row["adaptation"] = gen.drafter.summary()
                        if stopped:
                            row["suspended"] = True
                        results.append(row)
                    history[s.spec] = messages + [{"role": "assistant", "content": decode(row["token_ids"])}]
                    done += 1
                    if report is not None:
                        report(PROGRESS_STAGE, done, total)
                if run == 1:  # reference engines: once, on the turn vanilla was asked
                    messages = history["vanilla"][:-1]
                    ids = gens["vanilla"].tokenizer.encode(messages=messages)
                    for name, engine in list(engines.items()):
                        key = (json.dumps(prompt.question_id), turn, name, run)
                        if results.get(key) is not None:
                            continue
                        try:
                            reply, stopped = measured(watch, partial(engine.run, ids, max_new_tokens))
                        except RuntimeError as exc:  # a reference that dies mid-run loses its row, not the benchmark
                            engines.pop(name).close()
                            settings["references_unavailable"][name] = f"failed on {prompt.question_id}: {exc}"
                            write_settings(out, settings)
                            continue
                        row = reference_row(prompt, turn, name, reply, len(ids))
                        results.append(row | {"suspended": True} if stopped else row)
    watch.close()
    for engine in engines.values():
        engine.close()
    return settings


def llama_server_binary() -> Path:
    """Where scripts/build_llama_cpp.sh puts llama-server (SPECBLOCK_LLAMA_SERVER overrides it)."""
    import os

    from specblock.models.fetch import cache_root

    return Path(os.environ.get("SPECBLOCK_LLAMA_SERVER", cache_root() / "llama.cpp" / "build" / "bin" / "llama-server"))


def eagle3_gguf(target: str, drafter: str | None) -> Path:
    """The EAGLE-3 drafter (`--drafters eagle3=DIR`, else the shipped one) exported for llama.cpp,
    cached beside the target's GGUF under the drafter's content digest."""
    from specblock.drafters.export_gguf import export_gguf
    from specblock.drafters.shipped import shipped_drafter
    from specblock.models.fetch import gguf_file
    from specblock.models.resolve import resolve_model

    source = Path(drafter) if drafter else shipped_drafter(str(target), "eagle3")
    if source is None:
        raise SpecBlockError(f"no EAGLE-3 drafter for {target}: pass --drafters eagle3=DIR")
    digest = hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()[:12]
    out = gguf_file(str(target)).with_name(f"{target}-eagle3-{digest}.gguf")
    if not out.exists():
        export_gguf(source, out, resolve_model(target), gguf_file(str(target)))
    return out


def start_references(
    names: list[str], target: str, vanilla: SpecGenerator, settings: dict, drafters: dict[str, str] | None = None
) -> dict:
    """The reference engines that can run here; the others are listed in the settings."""
    from specblock.bench.reference_engines import ReferenceProcess
    from specblock.models.fetch import gguf_file, model_dir

    engines, missing = {}, {}
    drafters = drafters or {}
    for name in names:
        if name not in REFERENCES:
            raise InvalidSettingError(f"unknown reference engine {name!r}; use {', '.join(REFERENCES)}")
        local = Path(target).is_dir()  # a local HF directory has no GGUF file next to it
        if name == "hf-generate":
            hf_dir = Path(target) if local else model_dir(target)
            dtype = str(vanilla.target.dtype).removeprefix("torch.")  # the same dtype as this engine's rows
            args = ("hf", str(hf_dir), str(vanilla.tokenizer.eos_token_ids(vanilla.target.cfg)[0]), dtype)
        elif name.startswith("llama.cpp-server"):
            args = ("llama-server", "" if local else str(gguf_file(target)), str(llama_server_binary()))
            if name.endswith("-eagle3"):
                try:
                    args += ("-md", str(eagle3_gguf(target, drafters.get("eagle3"))))
                except SpecBlockError as exc:
                    missing[name] = f"no EAGLE-3 draft GGUF: {exc}"
                    continue
            args += LLAMA_SERVER_FLAGS[name]
        else:
            args = ("llama.cpp", "" if local else str(gguf_file(target)))
        try:
            engine = ReferenceProcess(name, *args)
        except RuntimeError as exc:
            missing[name] = str(exc)
            continue
        try:  # kept only once it has generated (an unpatched llama.cpp's EAGLE-3 aborts on Qwen2)
            engine.run(vanilla.tokenizer.encode(WARMUP_PROMPT), 8)
        except RuntimeError as exc:
            engine.close()
            missing[name] = f"failed its warm-up: {exc}"
            continue
        engines[name] = engine
    settings["references_unavailable"] = missing
    return engines


def reference_row(prompt: Prompt, turn: int, name: str, r: dict, prompt_tokens: int) -> dict:
    """A reference engine's row: its speed, and for llama-server its prompt time and its target
    forwards. Each forward after the prompt's commits its accepted draft tokens plus one, so
    forwards = new tokens - accepted draft tokens (the prefill counted, as in our tau); an
    engine that reports no drafting counts one forward per token."""
    accepted = r.get("draft_accepted", 0)
    return {
        "category": prompt.category, "label": prompt.label, "question_id": prompt.question_id, "turn": turn,
        "method": name, "run": 1, "node_budget": 0, "prompt_tokens": prompt_tokens, "new_tokens": r["new_tokens"],
        "iterations": max(1, r["new_tokens"] - accepted), "wall_s": r["wall_s"], "prefill_s": r.get("prefill_s", 0.0),
        "draft_tokens": r.get("draft_tokens", 0), "draft_accepted": accepted, "drafter_forwards": 0,
        "mean_tree_nodes": 0.0, "stop_reason": None, "accepted_lengths": [], "draft_ms": [], "target_ms": [],
        "equal_to_vanilla": None, "token_ids": [], "reference": True,
    }  # fmt: skip
