"""The model card `specblock train` writes beside a drafter it saves (`README.md`).

It records what a user needs to trust or reproduce the drafter: the target and its
fingerprint, the drafter's shape, the data (conversations, tokens, draft-vocabulary coverage),
the training settings and budget, the held-out accuracy, and how to run it. Speed figures are
not in it: they belong to a benchmark run, added when a drafter ships
(`benchmarks/ship_drafter.py` appends a "Measured" section to these same sections).
"""

from __future__ import annotations

import json
from pathlib import Path

from specblock.drafters.specblock_model import LEGACY_SETTINGS


def card_sections(drafter_dir: Path, target: str, manifest: dict, summary: dict, settings: dict) -> list[str]:
    """The title, shape, data and training lines of a drafter's card, as Markdown lines."""
    drafter_dir = Path(drafter_dir)
    config = json.loads((drafter_dir / "config.json").read_text())
    size_mb = (drafter_dir / "model.safetensors").stat().st_size / 1e6
    method = config["method"]
    data = manifest.get("settings", {})
    layers = config.get("num_hidden_layers", 1)  # EAGLE-3 configs name no count: one layer
    lines = [
        f"# {method} drafter for {target}",
        "",
        (
            f"{'A SpecBlock (design §4)' if method == 'specblock' else 'An EAGLE-3 (design §7)'} drafter: "
            f"{config['torch_dtype']} safetensors, {size_mb:.1f} MB, {layers} decoder "
            f"layer{'s' if layers > 1 else ''} of width {config['hidden_size']} with MLP width "
            f"{config['intermediate_size']}, draft vocabulary {config['draft_vocab_size']} tokens "
            f"(covering {100 * (manifest.get('draft_vocab_coverage') or 0):.1f}% of the training answer tokens). "
            "It holds its target's fingerprint (the embeddings at 32 places): loading it for another model fails."
        ),
        "",
        "## Data",
        (
            f"- {manifest.get('conversations', '?')} conversations, {manifest.get('tokens', '?')} kept tokens "
            f"({manifest.get('answer_tokens', '?')} answer tokens in the training split), from `{settings.get('data')}`."
        ),
        f"- Answers written by the target itself ({data.get('dtype', '?')}, "
        f"{'temperature mix' if data.get('temperature_mix') else 'greedy'}, at most {data.get('max_new_tokens', '?')} "
        "tokens a turn), features recorded as they were generated (`specblock data regen`)."
        if "max_turns" in data
        else f"- Features and top-{data.get('top_k', '?')} targets computed by `specblock data prepare` over answer "
        f"files (last {data.get('window', '?')} tokens of each conversation).",
        "",
        "## Training",
        (
            f"- {settings['max_steps']} AdamW steps x {settings['batch_size']} crops of {settings['window']} positions, "
            f"lr {settings['lr']} ({settings['warmup_steps']} warm-up steps, linear decay), grad clip {settings['grad_clip']}, "
            f"{settings.get('autocast', 'float32')} compute, seed {settings['seed']}."
        ),
    ]
    if method == "specblock":
        lines.append(
            f"- {settings['blocks']} blocks, valid-prefix mask {'on' if settings['valid_prefix'] else 'off'}, "
            f"layer shift {shift_text(settings)}, valid floor {settings['valid_floor']}."
        )
    if "heldout_accuracy" in summary:
        lines.append(
            f"- Held-out teacher-forced accuracy at depths 1-4: {summary['heldout_accuracy']}; "
            f"4-deep chain tau estimate {summary['chain_tau4']}."
        )
    return lines


def write_model_card(drafter_dir: Path, target: str, manifest: dict, summary: dict, settings: dict) -> Path:
    lines = card_sections(drafter_dir, target, manifest, summary, settings)
    method = settings["method"]
    lines += [
        f"- Wall clock of the last run: {summary.get('wall_s_this_run', '?')} s (resumed from step {summary.get('resumed_from', 0)}).",
        "",
        "## Use",
        f'`specblock generate --target {target} --method {method} --drafter {drafter_dir} --prompt "..."`',
    ]
    path = Path(drafter_dir) / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def shift_text(settings: dict) -> str:
    """How the run's layer-wise shift treated slot 0 (runs before the setting projected it)."""
    if not settings["layer_shift"]:
        return "off"
    if settings.get("shift_slot0", LEGACY_SETTINGS["shift_slot0"]):
        return "on, slot 0 projected too (the design's form)"
    return "on, slot 0 unprojected"
