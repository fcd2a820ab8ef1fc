"""`specblock train` and `specblock export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from specblock.cli.common import err, progress_reporter, user_errors
from specblock.models.registry import DEFAULT_TARGET


def train(
    method: Annotated[str, typer.Option(help="specblock | eagle3")],
    data: Annotated[Path, typer.Option(help="Directory written by `specblock data regen` (or `data prepare`).")],
    out: Annotated[Path, typer.Option(help="Run directory: log, checkpoint (resumed from), final drafter.")],
    target: Annotated[str, typer.Option(help="Registry name or local model directory.")] = DEFAULT_TARGET,
    max_steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    epochs: Annotated[float | None, typer.Option(help="Train for this many passes over the training answer tokens instead of --max-steps.")] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per step, over all processes.")] = 8,
    micro_batch: Annotated[int, typer.Option(help="Sequences per forward.")] = 2,
    window: Annotated[int, typer.Option(help="Positions per sequence crop.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, betas 0.9/0.95).")] = 6e-4,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps, then linear decay to 0.")] = 50,
    seed: Annotated[int, typer.Option()] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between resumable checkpoints.")] = 50,
    eval_every: Annotated[int, typer.Option(help="Steps between held-out evaluations.")] = 200,
    stop_at: Annotated[int, typer.Option(help="End this run after this step (0 = at --max-steps), the learning-rate schedule still that of --max-steps; its drafter lands in OUT/snapshots.")] = 0,
    snapshot_every: Annotated[int, typer.Option(help="Keep the drafter every this many steps in OUT/snapshots (0 = never), for scaling curves.")] = 0,
    threads: Annotated[int | None, typer.Option(help="PyTorch CPU threads per process.")] = None,
    blocks: Annotated[int, typer.Option(help="SpecBlock: blocks per training example (1 = no inheritance).")] = 3,
    valid_prefix: Annotated[bool, typer.Option(help="SpecBlock: valid-prefix loss mask.")] = True,
    layer_shift: Annotated[bool, typer.Option(help="SpecBlock: layer-wise shift projections.")] = True,
    shift_slot0: Annotated[
        bool, typer.Option(help="SpecBlock: the design's shift, which projects slot 0 too (default: slot 0 keeps its hidden).")
    ] = False,
    valid_floor: Annotated[
        float,
        typer.Option(help="SpecBlock: divide each slot's loss by at least this share of its trainable positions "
                     "(1 = weigh each slot by how often its prefix is right; 0 = the design's plain mean)."),
    ] = 1.0,
    intermediate_size: Annotated[int, typer.Option(help="Both drafters' MLP width (0 = the target's, as design §4; smaller = a compact drafter).")] = 0,
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast where this machine has native bf16, else fp32) | float32 | bfloat16.")] = "auto",
    device: Annotated[str, typer.Option(help="cpu or cuda (nccl under torchrun, one GPU per process).")] = "cpu",
) -> None:
    """Train a SpecBlock or EAGLE-3 drafter on prepared data (also under torchrun)."""
    import torch

    from specblock.models.resolve import resolve_model
    from specblock.training.dataset import load_manifest
    from specblock.training.trainer import TrainSettings, train as run_training

    with user_errors():
        if threads:
            torch.set_num_threads(threads)
        if epochs is not None:
            manifest = load_manifest(data)
            max_steps = max(1, round(epochs * manifest["tokens"] / (batch_size * window)))
        settings = TrainSettings(
            method=method, max_steps=max_steps, batch_size=batch_size, micro_batch=micro_batch, window=window, lr=lr,
            warmup_steps=warmup_steps, seed=seed, checkpoint_every=checkpoint_every, eval_every=eval_every,
            snapshot_every=snapshot_every, stop_at=stop_at,
            blocks=blocks, valid_prefix=valid_prefix, layer_shift=layer_shift, shift_slot0=shift_slot0,
            valid_floor=valid_floor,
            precision=precision, device=device, intermediate_size=intermediate_size,
        )  # fmt: skip
        dtype = settings.autocast_dtype()
        err.print(f"training on {device} in {'bf16 autocast (fp32 master weights)' if dtype else 'float32'}", highlight=False)
        target_dir = resolve_model(target)

        def log(entry: dict) -> None:
            err.print(
                f"step {entry['step']}: loss {entry['loss']:.3f} (draft {entry['draft_loss']:.3f}, rank {entry['rank_loss']:.3f}) "
                f"slot acc {entry['slot_accuracy'][0]} {entry.get('chain_tau4', '')}",
                highlight=False,
            )

        with progress_reporter() as report:
            summary = run_training(settings, data, target_dir, out, report=report, log=log)
        if "stopped_at" in summary:
            err.print(f"stopped after step {summary['stopped_at']}; its drafter is in {out / 'snapshots'}")
        elif "chain_tau4" in summary:
            err.print(f"drafter saved to {out / 'drafter'}; held-out chain tau (4 deep) {summary['chain_tau4']}")


def export(
    drafter: Annotated[Path, typer.Argument(help="An EAGLE-3 drafter checkpoint directory.")],
    out: Annotated[Path, typer.Option(help="Output directory (sglang) or .gguf file (gguf).")],
    format: Annotated[str, typer.Option("--format", help="sglang (also what vLLM loads) or gguf (llama.cpp).")] = "sglang",
    target: Annotated[str, typer.Option(help="The target the drafter belongs to (for its config).")] = DEFAULT_TARGET,
    target_gguf: Annotated[Path | None, typer.Option(help="gguf: the target's GGUF file, whose tokenizer the draft copies (default: the fetched one of a registry target).")] = None,
) -> None:
    """Write a drafter in another engine's format."""
    from specblock.drafters.export import export_sglang
    from specblock.errors import InvalidSettingError
    from specblock.models.resolve import resolve_model

    with user_errors():
        if format == "sglang":
            export_sglang(drafter, out, resolve_model(target))
            err.print(f"exported {drafter} -> {out} (SGLang / vLLM EAGLE-3 layout)")
            return
        if format != "gguf":
            raise InvalidSettingError(f"unknown export format {format!r} (supported: sglang, gguf)")
        from specblock.drafters.export_gguf import FEATURE_ARCHS, export_gguf
        from specblock.models.fetch import gguf_file
        from specblock.models.registry import MODELS

        if target_gguf is None:
            if target not in MODELS:
                raise InvalidSettingError("--target-gguf is needed for a target outside the registry")
            target_gguf = gguf_file(target)
        if not Path(target_gguf).is_file():
            raise InvalidSettingError(f"no target GGUF at {target_gguf} (run `specblock models fetch {target}`)")
        arch = export_gguf(drafter, out, resolve_model(target), target_gguf)
        err.print(f"exported {drafter} -> {out} (llama.cpp: llama-server -m TARGET.gguf -md {out} --spec-type draft-eagle3)")
        if arch not in FEATURE_ARCHS:
            err.print(f"[yellow]warning:[/yellow] the pinned llama.cpp cannot draft with EAGLE-3 for a {arch!r} target "
                      "(it extracts target features only for Llama, Qwen3 and a few others)", highlight=False)  # fmt: skip
