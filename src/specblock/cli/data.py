"""`specblock data ...`: regenerate answers with the target and prepare training data."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated

import typer

from specblock.cli.common import err, progress_reporter, user_errors
from specblock.errors import InvalidSettingError
from specblock.models.registry import DEFAULT_TARGET

def source_names(text: str) -> set[str]:
    """The comma-separated --sources value as a set; an empty one is an error, not "all"."""
    names = {s.strip() for s in text.split(",") if s.strip()}
    if not names:
        raise InvalidSettingError("--sources names no source")
    return names


data_app = typer.Typer(help="Make drafter training data: regenerate answers, prepare features.", no_args_is_help=True)


@data_app.command("prepare")
def data_prepare(
    answers: Annotated[list[Path], typer.Option("--answers", help="Answered conversations (JSONL with messages); repeatable.")],
    out: Annotated[Path, typer.Option(help="Output directory for shards, draft vocabulary and manifest.")],
    target: Annotated[str, typer.Option(help="Registry name or local model directory.")] = DEFAULT_TARGET,
    sources: Annotated[str | None, typer.Option(help="Keep only these sources, comma-separated (e.g. ultrachat,gsm8k).")] = None,
    limit: Annotated[int | None, typer.Option(help="Use at most this many conversations.")] = None,
    window: Annotated[int, typer.Option(help="Tokens kept per conversation (its last ones).")] = 320,
    top_k: Annotated[int, typer.Option(help="Target top-k probabilities stored per token (>= 20).")] = 20,
    vocab_size: Annotated[int, typer.Option(help="Draft vocabulary size.")] = 4096,
    holdout: Annotated[int, typer.Option(help="Conversations held out for evaluation.")] = 32,
    shuffle_seed: Annotated[int | None, typer.Option(help="Shuffle the conversations with this seed before --limit (mixes sources).")] = None,
) -> None:
    """Run the target once over the answers; store features, top-k targets and the draft vocabulary."""
    from specblock.models.resolve import resolve_model
    from specblock.target.transformer import Transformer
    from specblock.text import ChatTokenizer
    from specblock.training.conversations import read_conversations
    from specblock.training.prepare import PrepareSettings, prepare

    with user_errors():
        if top_k < 20:
            raise InvalidSettingError("--top-k must be at least 20 (design §5)")
        if window < 8:
            raise InvalidSettingError("--window must be at least 8 tokens")
        convs = [c for path in answers for c in read_conversations(path)]
        if sources is not None:
            wanted = source_names(sources)
            convs = [c for c in convs if c.source in wanted]
        convs = [c for c in convs if any(m["role"] == "assistant" for m in c.messages)]
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(convs)
        if limit is not None:
            convs = convs[:limit]
        if not convs:
            raise InvalidSettingError("no answered conversations to prepare (check --answers and --sources)")
        model_dir = resolve_model(target)
        model = Transformer.load(model_dir)
        tok = ChatTokenizer.load(model_dir)
        eos = tok.hf.eos_token_id
        settings = PrepareSettings(target=str(target), window=window, top_k=top_k, vocab_size=vocab_size, holdout=holdout)
        with progress_reporter() as report:
            manifest = prepare(model, tok, convs, out, settings, eos_id=eos, report=report)
        err.print(
            f"prepared {manifest['conversations']} conversations, {manifest['tokens']} tokens "
            f"({manifest['answer_tokens']} answer tokens in training shards); draft vocabulary "
            f"{manifest['draft_vocab_size']} covers {100 * manifest['draft_vocab_coverage']:.1f}% of them -> {out}"
        )


@data_app.command("regen")
def data_regen(
    prompts: Annotated[list[Path], typer.Option("--prompts", help="Prompt files (UltraChat, ShareGPT, GSM8K, Alpaca formats); repeatable.")],
    out: Annotated[Path, typer.Option(help="Output directory: answers, feature shards, draft vocabulary, manifest (resumes).")],
    target: Annotated[str, typer.Option(help="Registry name or local model directory.")] = DEFAULT_TARGET,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per answer (per turn).")] = 256,
    temperature_mix: Annotated[bool, typer.Option(help="Draw the temperature per conversation as design §5 does (default greedy).")] = False,
    limit: Annotated[int | None, typer.Option(help="Regenerate at most this many conversations.")] = None,
    max_per_source: Annotated[int | None, typer.Option(help="And at most this many of each source.")] = None,
    max_turns: Annotated[int, typer.Option(help="User turns answered per conversation (UltraChat has several).")] = 4,
    max_prompt_tokens: Annotated[int, typer.Option(help="Skip first prompts longer than this.")] = 1536,
    batch_size: Annotated[int, typer.Option(help="Requests generated together (continuous batching).")] = 32,
    dtype: Annotated[str, typer.Option(help="auto (fastest here), float32, bfloat16, float16 or int8 (the target's compute dtype).")] = "auto",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    vocab_size: Annotated[int, typer.Option(help="Draft vocabulary size written with the data.")] = 4096,
    seed: Annotated[int, typer.Option(help="Seed for the temperature mix and sampling.")] = 0,
) -> None:
    """Answer every user turn of every prompt with the target, keeping its features (self-distillation data)."""
    from specblock.training.regen import RegenSettings, regenerate

    with user_errors():
        settings = RegenSettings(
            target=target, max_new_tokens=max_new_tokens, temperature_mix=temperature_mix, limit=limit,
            max_per_source=max_per_source, batch_size=batch_size, seed=seed, device=device, dtype=dtype,
            max_turns=max_turns, max_prompt_tokens=max_prompt_tokens, vocab_size=vocab_size,
        )  # fmt: skip
        with progress_reporter() as report:
            written = regenerate(prompts, out, settings, report=report)
        err.print(f"{written} conversations written to {out}")


@data_app.command("heldout-questions")
def data_heldout_questions(
    data: Annotated[list[Path], typer.Option(help="A `specblock data regen` directory or a training prompt file (its held-out prompts); repeatable.")],
    out: Annotated[Path, typer.Option(help="Question file to write (Spec-Bench JSONL: question_id, category, turns).")],
    sources: Annotated[str | None, typer.Option(help="Only these sources, comma-separated (e.g. code_alpaca_4535,code_alpaca_2k).")] = None,
    per_source: Annotated[int | None, typer.Option(help="At most this many questions of each source.")] = None,
    max_turns: Annotated[int, typer.Option(help="User turns kept per question.")] = 1,
) -> None:
    """Write the held-out conversations as a question file for `specblock bench --data` (never trained on).

    The split is a hash of source and id, so a prompt file's held-out prompts are never trained
    on, whatever was regenerated from it: a held-out bench needs no regenerated data. (In file
    order; a regen directory lists them in the order they were answered.)"""
    import json

    from specblock.training.prepare import write_text_atomic
    from specblock.training.regen_store import heldout_questions

    with user_errors():
        if max_turns < 1 or (per_source is not None and per_source < 1):
            raise InvalidSettingError("--max-turns and --per-source must be >= 1")
        wanted = source_names(sources) if sources is not None else None
        questions = heldout_questions(data, wanted, per_source, max_turns)
        if not questions:
            raise InvalidSettingError(f"{', '.join(map(str, data))}: no held-out conversations")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, "".join(json.dumps(q) + "\n" for q in questions))
        err.print(f"{len(questions)} held-out questions written to {out}")
