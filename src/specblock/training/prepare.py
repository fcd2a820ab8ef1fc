"""`specblock data prepare`: run the target once over answered conversations and store
per token what drafter training needs (design §5), so training never re-runs the target.

Per kept token j of a sequence (the last `window` tokens):
- `tokens[j]`, and `answer_mask[j]` = 1 when token j belongs to an assistant answer;
- `features[j]`: the three captured target hidden states after token j (fp16, 3H wide);
- `topk_ids[j]`, `topk_logprobs[j]`: the target's top-k next-token log-probabilities at j,
  i.e. its distribution over token j+1 (fp16; training renormalises them).

Shards of `shard_size` conversations are written atomically, so an interrupted run resumes
at the first missing shard. The draft vocabulary is counted from the answer tokens of the
training shards (never from held-out ones).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from specblock.errors import InvalidSettingError, SpecBlockError
from specblock.target.transformer import Transformer
from specblock.text import ChatTokenizer
from specblock.training.conversations import Conversation
from specblock.training.draft_vocab import DraftVocab

Reporter = Callable[[str, int, int], None]
SHARD_KEYS = ("tokens", "answer_mask", "features", "topk_ids", "topk_logprobs", "offsets")
LOGPROB_FLOOR = -60.0  # stored top-k log-probabilities are clamped here (fp16-safe; nothing likely)


@dataclass
class PrepareSettings:
    target: str
    window: int = 320  # tokens kept per conversation (its end: the answer and the prompt's tail)
    top_k: int = 20
    vocab_size: int = 4096
    shard_size: int = 64
    holdout: int = 32  # conversations kept out of training for tau / accuracy evaluation


def tokenize_conversation(tok: ChatTokenizer, conv: Conversation, eos_id: int) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and a 0/1 mask of its assistant-answer tokens.

    Each assistant turn is appended after the chat template's prompt for the turns before
    it; a turn ends with the end-of-turn token unless the answer was cut (finish_reason
    'length'). Later turns whose template does not extend the earlier ids are dropped.
    """
    ids: list[int] = []
    mask: list[int] = []
    last_assistant = max((i for i, m in enumerate(conv.messages) if m["role"] == "assistant"), default=-1)
    if last_assistant < 0:
        raise InvalidSettingError(f"conversation {conv.id} has no assistant answer (run `specblock data regen` first)")
    for i, m in enumerate(conv.messages):
        if m["role"] != "assistant":
            continue
        prompt = tok.encode(messages=conv.messages[:i])
        if prompt[: len(ids)] != ids:
            break
        mask += [0] * (len(prompt) - len(ids))
        ids = list(prompt)
        answer = list(tok.hf(m["content"], add_special_tokens=False).input_ids)
        cut = i == last_assistant and conv.extra.get("finish_reason") == "length"
        if not cut:
            answer.append(eos_id)
        ids += answer
        mask += [1] * len(answer)
    return ids, mask


def _shard_path(out: Path, split: str, index: int) -> Path:
    return out / f"{split}-{index:05d}.safetensors"


def _prepare_shard(model: Transformer, rows: list[tuple[list[int], list[int]]], s: PrepareSettings) -> dict[str, torch.Tensor]:
    records = []
    for ids, mask in rows:
        tokens = torch.tensor(ids, dtype=torch.long)
        cache = model.new_cache(len(ids))
        out = model.forward(tokens, torch.arange(len(ids)), cache, 0, capture=True)
        keep = slice(max(0, len(ids) - s.window), len(ids))
        logprobs = torch.log_softmax(model.logits(out.hidden[keep]), dim=-1)
        top = logprobs.topk(s.top_k, dim=-1)
        records.append({
            "tokens": tokens[keep].to(torch.int32),
            "answer_mask": torch.tensor(mask[keep], dtype=torch.uint8),
            "features": out.features[keep].to(torch.float16),
            "topk_ids": top.indices.to(torch.int32),
            "topk_logprobs": top.values.clamp(min=LOGPROB_FLOOR).to(torch.float16),
        })  # fmt: skip
    return pack_shard(records)


def pack_shard(records: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-sequence columns (`SHARD_KEYS` but offsets) -> one shard: each column concatenated,
    plus `offsets`, where sequence n spans rows offsets[n]:offsets[n+1]."""
    shard = {k: torch.cat([r[k] for r in records]).contiguous() for k in SHARD_KEYS if k != "offsets"}
    shard["offsets"] = torch.tensor([0] + [r["tokens"].numel() for r in records], dtype=torch.long).cumsum(0)
    return shard


def save_shard(path: Path, shard: dict[str, torch.Tensor]) -> None:
    """Write a shard through a temporary file and a rename: a kill never leaves half a shard."""
    tmp = path.with_suffix(".tmp")
    save_file(shard, str(tmp))
    os.replace(tmp, path)


def prepare(
    model: Transformer,
    tok: ChatTokenizer,
    conversations: list[Conversation],
    out: Path,
    settings: PrepareSettings,
    eos_id: int,
    report: Reporter | None = None,
) -> dict:
    """Write the shards (skipping those already present), the draft vocabulary and a manifest."""
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    settings_dict = asdict(settings)
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text())
        if previous.get("settings") != settings_dict or previous.get("conversations") != len(conversations):
            raise SpecBlockError(
                f"{out} holds data prepared with other settings or data ({previous.get('settings')}); use a new --out"
            )
    manifest = {
        "settings": settings_dict,
        "conversations": len(conversations),
        "hidden_size": model.cfg.hidden_size,
        "feature_width": 3 * model.cfg.hidden_size,
        "target_vocab_size": model.cfg.vocab_size,
        "feature_layers": list(model.cfg.feature_layers),
        "complete": False,
    }
    write_json(manifest_path, manifest)
    rows = [tokenize_conversation(tok, c, eos_id) for c in conversations]
    held = min(settings.holdout, max(0, len(rows) - 1))
    splits = {"train": rows[: len(rows) - held], "heldout": rows[len(rows) - held :]}
    total = sum(len(r) for r in splits.values())
    done = 0
    shard_files: dict[str, list[str]] = {"train": [], "heldout": []}
    for split, split_rows in splits.items():
        for index, begin in enumerate(range(0, len(split_rows), settings.shard_size)):
            chunk = split_rows[begin : begin + settings.shard_size]
            path = _shard_path(out, split, index)
            if not path.exists():
                save_shard(path, _prepare_shard(model, chunk, settings))
            shard_files[split].append(path.name)
            done += len(chunk)
            if report:
                report("prepare", done, total)
    return complete_manifest(out, manifest, shard_files, settings.vocab_size, eos_id)


def complete_manifest(out: Path, manifest: dict, shard_files: dict[str, list[str]], vocab_size: int, eos_id: int) -> dict:
    """Count the training shards' answer tokens, write the draft vocabulary of the `vocab_size`
    most frequent (EOS always in), and mark the manifest complete."""
    vocab_total = manifest["target_vocab_size"]
    counts = torch.zeros(vocab_total, dtype=torch.long)
    tokens_kept = 0
    for name in shard_files["train"]:
        with safe_open(str(out / name), framework="pt") as shard:  # just two columns, not the features
            tokens, answer_mask = shard.get_tensor("tokens"), shard.get_tensor("answer_mask")
        counts += torch.bincount(tokens[answer_mask.bool()].long(), minlength=vocab_total)
        tokens_kept += tokens.numel()
    vocab = DraftVocab.from_counts(counts, min(vocab_size, int((counts > 0).sum()) + 1), always=[eos_id])
    vocab.save(out / "draft_vocab.safetensors")
    coverage = float(counts[vocab.target_ids].sum()) / max(1, int(counts.sum()))
    manifest.update(
        shards=shard_files,
        tokens=tokens_kept,
        answer_tokens=int(counts.sum()),
        draft_vocab_size=vocab.size,
        draft_vocab_coverage=round(coverage, 4),
        complete=True,
    )
    write_json(out / "manifest.json", manifest)
    return manifest


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, obj: dict) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
