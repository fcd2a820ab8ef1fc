"""`specblock data regen`: the target answers the training prompts (self-distillation data).

A drafter learns to predict the target's own text, so its training answers are written by
the target (design §5). Each conversation's first user turn is answered and written as one
JSONL row: `{"id", "source", "messages": [...prompt, assistant], "finish_reason", "temperature"}`.

- `--batch-size 1` is the exact mode: the project's lossless engine, so greedy answers are
  the target's own greedy decoding token for token.
- `--batch-size N > 1` runs Hugging Face `generate` on left-padded batches (faster on a GPU).
  Padded, batched fp32 matmuls round differently from batch-1 ones, so on near-ties a greedy
  answer can differ from the exact mode's (it is still a faithful sample of the target).
  Batches hold one temperature each and are sorted by prompt length to keep padding small,
  so rows are written in generation order, not input order.

The output is appended and flushed after every batch; a rerun skips ids already written, and
a last line cut by a kill is dropped and regenerated.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from specblock.errors import InvalidSettingError
from specblock.training.conversations import Conversation, read_conversations

Reporter = Callable[[str, int, int], None]
log = logging.getLogger(__name__)
# Design §5 temperature mix: (cumulative probability, temperature); top-p 0.95 when sampling.
TEMPERATURE_MIX = ((0.4, 0.0), (0.5, 0.3), (0.6, 0.5), (0.7, 0.7), (1.0, 1.0))
MIX_TOP_P = 0.95


@dataclass
class RegenSettings:
    target: str
    max_new_tokens: int = 256
    temperature_mix: bool = False  # False: greedy answers
    limit: int | None = None  # answer only the first `limit` usable conversations
    batch_size: int = 8
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidSettingError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise InvalidSettingError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 0:
            raise InvalidSettingError(f"--limit must be >= 0, got {self.limit}")


def _unit(seed: int, conv_id: str, salt: str) -> int:
    """A stable 64-bit hash, so draws depend on (seed, id) only, not on order or batching."""
    digest = hashlib.sha256(f"{seed}\0{salt}\0{conv_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def draw_temperature(seed: int, conv_id: str) -> float:
    """The conversation's temperature under the mix (deterministic per seed and id)."""
    u = _unit(seed, conv_id, "temperature") / 2**64
    return next(t for edge, t in TEMPERATURE_MIX if u < edge)


def sample_seed(seed: int, conv_id: str) -> int:
    return _unit(seed, conv_id, "sampling") % 2**31


def done_ids(out: Path) -> set[str]:
    """Ids already in `out`. A kill can leave a cut last line: it is dropped (and regenerated)."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    keep = data.rfind(b"\n") + 1  # whatever follows the last newline was cut mid-write
    lines = data[:keep].split(b"\n")[:-1]
    last = max((n for n, line in enumerate(lines) if line.strip()), default=-1)
    ids: set[str] = set()
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ids.add(str(row["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            if n != last:
                raise InvalidSettingError(f"{out}:{n + 1}: not a regenerated-answer row; refusing to append") from None
            keep -= len(line) + 1
    if keep < len(data):
        log.warning("%s: dropping a cut last line (its conversation is regenerated)", out)
        with out.open("r+b") as f:
            f.truncate(keep)
    return ids


def _select(prompts: list[Path], settings: RegenSettings) -> list[Conversation]:
    """Usable conversations in input order: a user turn, first occurrence of each id, up to the limit."""
    convs: list[Conversation] = []
    seen: set[str] = set()
    no_user = duplicates = 0
    for path in prompts:
        for conv in read_conversations(Path(path)):
            if not any(m["role"] == "user" for m in conv.messages):
                no_user += 1
            elif conv.id in seen:
                duplicates += 1
            else:
                seen.add(conv.id)
                convs.append(conv)
    if no_user:
        log.warning("skipped %d conversation(s) without a user message", no_user)
    if duplicates:
        log.warning("skipped %d conversation(s) whose id was already seen in the prompts", duplicates)
    return convs if settings.limit is None else convs[: settings.limit]


class _EngineAnswerer:
    """Batch size 1 through the lossless engine: exact target decoding."""

    def __init__(self, settings: RegenSettings) -> None:
        from specblock.api import SpecGenerator

        # fp32: the answers are the target's exact greedy decoding, the same as HF's batched fp32 path
        self.gen = SpecGenerator.load(settings.target, "lookup", device=settings.device, dtype="float32")
        self.tokenizer = self.gen.tokenizer
        self.context = self.gen.runner.context_limit

    def answer(self, batch: list[tuple[Conversation, list[int]]], temperature: float, settings: RegenSettings):
        ((conv, ids),) = batch
        top_p = MIX_TOP_P if temperature > 0 else 1.0
        seed = sample_seed(settings.seed, conv.id)
        r = self.gen.generate(input_ids=ids, max_new_tokens=settings.max_new_tokens, temperature=temperature,
                              top_p=top_p, seed=seed)  # fmt: skip
        stopped = r.stop_reason == "eos"
        # decode without the EOS token, as the batched path does (it may not be a special token)
        return [(self.tokenizer.decode(r.token_ids[:-1] if stopped else r.token_ids), "stop" if stopped else "length")]


class _HFAnswerer:
    """Batch size > 1 through Hugging Face `generate` with left padding."""

    def __init__(self, settings: RegenSettings) -> None:
        from transformers import AutoModelForCausalLM

        from specblock.models.resolve import resolve_model
        from specblock.text import ChatTokenizer

        model_dir = resolve_model(settings.target)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(settings.device)
        self.model.eval()
        self.tokenizer = ChatTokenizer.load(model_dir)
        cfg_eos = self.model.config.eos_token_id
        eos = set(cfg_eos if isinstance(cfg_eos, list) else [cfg_eos] if cfg_eos is not None else [])
        if self.tokenizer.hf.eos_token_id is not None:
            eos.add(self.tokenizer.hf.eos_token_id)
        if not eos:
            raise InvalidSettingError(f"{model_dir}: neither config nor tokenizer names an EOS token")
        self.eos = sorted(eos)
        pad = self.tokenizer.hf.pad_token_id
        self.pad = pad if pad is not None else self.eos[0]
        self.context = int(self.model.config.max_position_embeddings)

    @torch.no_grad()
    def answer(self, batch: list[tuple[Conversation, list[int]]], temperature: float, settings: RegenSettings):
        from transformers import GenerationConfig

        width = max(len(ids) for _, ids in batch)
        input_ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, ids) in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        # Rows stop at the context window like the engine does: generate to the shortest
        # prompt's room, then cut each row to its own.
        room = [min(settings.max_new_tokens, self.context - len(ids)) for _, ids in batch]
        sampling = {"temperature": temperature, "top_p": MIX_TOP_P, "top_k": 0} if temperature > 0 else {}
        # generate fills unset fields from the model's generation_config.json: pin the ones that change text
        config = GenerationConfig(max_new_tokens=max(room), eos_token_id=self.eos, pad_token_id=self.pad,
                                  do_sample=temperature > 0, repetition_penalty=1.0, **sampling)  # fmt: skip
        torch.manual_seed(sample_seed(settings.seed, batch[0][0].id))
        device = self.model.device
        out = self.model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                  generation_config=config)[:, width:].tolist()  # fmt: skip
        answers = []
        for new, limit in zip(out, room):
            end = next((i for i, t in enumerate(new[:limit]) if t in self.eos), None)
            kept = new[:limit] if end is None else new[:end]
            answers.append(
                (self.tokenizer.hf.decode(kept, skip_special_tokens=True), "length" if end is None else "stop")
            )
        return answers


def regenerate(prompts: list[Path], out: Path, settings: RegenSettings, report: Reporter | None = None) -> int:
    """Answer every not-yet-answered conversation of `prompts` into `out`; returns rows written now."""
    convs = _select(prompts, settings)
    if not convs and settings.limit != 0:
        raise InvalidSettingError("no conversation with a user message in the prompt files")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    finished = done_ids(out)
    pending = [c for c in convs if c.id not in finished]
    done, total = len(convs) - len(pending), len(convs)
    if report:
        report("regen", done, total)
    if not pending:
        return 0
    answerer = _EngineAnswerer(settings) if settings.batch_size == 1 else _HFAnswerer(settings)
    groups: dict[float, list[tuple[Conversation, list[int]]]] = {}
    too_long = 0
    for conv in pending:
        prompt = conv.first_user_turn()
        ids = answerer.tokenizer.encode(messages=prompt)
        if len(ids) >= answerer.context:
            too_long += 1
            continue
        temperature = draw_temperature(settings.seed, conv.id) if settings.temperature_mix else 0.0
        groups.setdefault(temperature, []).append((conv, ids))
    if too_long:
        log.warning("skipped %d prompt(s) that do not fit in the target's %d-token context", too_long, answerer.context)
        done += too_long
    written = 0
    with out.open("a", encoding="utf-8") as f:
        for temperature, items in groups.items():
            if settings.batch_size > 1:
                items = sorted(items, key=lambda item: len(item[1]))
            for start in range(0, len(items), settings.batch_size):
                batch = items[start : start + settings.batch_size]
                for (conv, _), (text, finish) in zip(batch, answerer.answer(batch, temperature, settings)):
                    messages = conv.first_user_turn() + [{"role": "assistant", "content": text}]
                    row = {"id": conv.id, "source": conv.source, "messages": messages,
                           "finish_reason": finish, "temperature": temperature}  # fmt: skip
                    f.write(json.dumps(row) + "\n")
                f.flush()
                written += len(batch)
                done += len(batch)
                if report:
                    report("regen", done, total)
    return written
