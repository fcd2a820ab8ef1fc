"""`specblock data regen`: the target answers the training prompts (self-distillation data).

A drafter learns to predict the target's own text, so its training answers are written by
the target (design §5). Every user turn of a conversation is answered in order (UltraChat's
later turns follow the target's own earlier answers), up to `max_turns` and the batch slot's
room. Generation runs in this project's engine, `batch_size` requests at a time
(`regen_engine`). On a batch-invariant target (a CPU whose kernel table finds row-invariant
products in its dtype) a first turn's tokens equal those of decoding it alone in that dtype;
a later turn prefills only its new tokens after its own earlier turn's cache (a chunked
prefill, which may part from a whole-prompt one at a near-tie); elsewhere (CUDA, CPUs without
invariant products) the batched rows round differently and may part from solo decoding at
near-ties (all of them still faithful samples of the target).

The same pass keeps what training needs per token (features, top-k log-probabilities), so no
second target pass over the text is needed: the output directory is ready for
`specblock train --data`. Per conversation only the answers and the `context_keep` prompt
tokens before the first answer are kept. A hash of (source, id) puts 3% of each source in
the held-out split. Writing is in numbered flushes (`regen_store`); a killed run resumes with
the same command.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from specblock.errors import InvalidSettingError
from specblock.sampling import SamplingParams
from specblock.training.conversations import Conversation, read_conversations, round_robin
from specblock.training.prepare import complete_manifest, tokenize_conversation, write_json
from specblock.training.regen_engine import NO_LOGPROB, BatchedGeneration, Generated, GenerationRequest
from specblock.training.regen_store import RegenStore

Reporter = Callable[..., None]
log = logging.getLogger(__name__)
# Design §5 temperature mix: (cumulative probability, temperature); top-p 0.95 when sampling.
TEMPERATURE_MIX = ((0.4, 0.0), (0.5, 0.3), (0.6, 0.5), (0.7, 0.7), (1.0, 1.0))
MIX_TOP_P = 0.95
# Stored features: bf16 has fp32's range (hidden states can hold outliers past fp16's 65504)
# at fp16's size: 2 bytes a value, 3H values a token.
FEATURE_DTYPE = torch.bfloat16


@dataclass
class RegenSettings:
    target: str
    max_new_tokens: int = 256  # per turn
    temperature_mix: bool = False  # False: greedy answers
    limit: int | None = None  # answer only the first `limit` usable conversations
    max_per_source: int | None = None  # and at most this many of each source
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    dtype: str = "auto"
    max_turns: int = 4  # user turns answered per conversation
    max_prompt_tokens: int = 1536  # longer first prompts are skipped
    top_k: int = 20
    context_keep: int = 128  # prompt tokens kept before the first answer
    shard_size: int = 64
    vocab_size: int = 4096

    def __post_init__(self) -> None:
        checks = {"max-new-tokens": self.max_new_tokens, "batch-size": self.batch_size, "max-turns": self.max_turns,
                  "max-prompt-tokens": self.max_prompt_tokens, "shard-size": self.shard_size}  # fmt: skip
        for name, value in checks.items():
            if value < 1:
                raise InvalidSettingError(f"--{name} must be at least 1, got {value}")
        if self.top_k < 20:
            raise InvalidSettingError(f"--top-k must be at least 20 (design §5), got {self.top_k}")
        for name, value in (("limit", self.limit), ("max-per-source", self.max_per_source)):
            if value is not None and value < 0:
                raise InvalidSettingError(f"--{name} must be >= 0, got {value}")

    def identity(self, dtype: str) -> dict:
        """What shapes the output (a resumed run must match it); sizes of the run may change."""
        skip = {"limit", "max_per_source", "batch_size", "device", "dtype", "shard_size", "vocab_size"}
        return {k: v for k, v in asdict(self).items() if k not in skip} | {"dtype": dtype}


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


def select(prompts: list[Path], settings: RegenSettings) -> list[Conversation]:
    """Usable conversations (a user turn, first occurrence of each id, within the limits), the
    sources interleaved."""
    convs: list[Conversation] = []
    seen: set[str] = set()
    per_source: dict[str, int] = {}
    no_user = duplicates = 0
    for path in prompts:
        for conv in read_conversations(Path(path)):
            if not conv.user_turns():
                no_user += 1
            elif conv.id in seen:
                duplicates += 1
            elif settings.max_per_source is None or per_source.get(conv.source, 0) < settings.max_per_source:
                seen.add(conv.id)
                per_source[conv.source] = per_source.get(conv.source, 0) + 1
                convs.append(conv)
    if no_user:
        log.warning("skipped %d conversation(s) without a user message", no_user)
    if duplicates:
        log.warning("skipped %d conversation(s) whose id was already seen in the prompts", duplicates)
    convs = _interleaved(convs)
    return convs if settings.limit is None else convs[: settings.limit]


def _interleaved(convs: list[Conversation]) -> list[Conversation]:
    """Round-robin over the sources (each in file order), so that any prefix of the work, a
    `--limit` or a run cut short, mixes every source."""
    by_source: dict[str, list[Conversation]] = {}
    for conv in convs:
        by_source.setdefault(conv.source, []).append(conv)
    return round_robin(list(by_source.values()))


@dataclass
class _Conversation:
    """A conversation being answered: its messages so far and the turn in flight."""

    conv: Conversation
    temperature: float
    messages: list[dict]
    turn: int = 0
    prompt_mask: list[int] = field(default_factory=list)  # 1 at earlier answers' tokens in the prompt


class _Regeneration:
    def __init__(self, settings: RegenSettings, store: RegenStore, report: Reporter | None) -> None:
        from specblock.api import parse_dtype
        from specblock.models.resolve import resolve_model
        from specblock.target.transformer import Transformer
        from specblock.text import ChatTokenizer

        self.settings = settings
        self.store = store
        self.report = report
        model_dir = resolve_model(settings.target)
        self.model = Transformer.load(model_dir, parse_dtype(settings.dtype, settings.device), settings.device)
        self.tok = ChatTokenizer.load(model_dir)
        self.eos = self.tok.eos_token_ids(self.model.cfg)
        self.eos_id = _eos_id(self.tok, self.model.cfg)
        capacity = min(self.model.cfg.max_position_embeddings, settings.max_prompt_tokens + 2 * settings.max_new_tokens)
        self.engine = BatchedGeneration(self.model, settings.batch_size, capacity + 2, self.eos, settings.top_k)
        self.next_turns: deque[GenerationRequest] = deque()
        self.skipped = self.written = self.new_tokens = self.prefix_mismatches = 0

    def request(self, state: _Conversation) -> GenerationRequest | None:
        """The request for the state's current turn (its prompt: the messages so far, the target's
        own answers in place of the file's, then the turn's user message), or None when it does
        not fit a batch slot. Sets the state's messages and prompt mask only on success."""
        s = self.settings
        turns = state.conv.user_turns()
        upto = turns[state.turn]
        if state.turn == 0:
            messages = state.conv.messages[: upto + 1]
        else:
            between = state.conv.messages[turns[state.turn - 1] + 1 : upto + 1]
            messages = state.messages + [m for m in between if m["role"] != "assistant"]
        prompt = self.tok.encode(messages=messages)
        limit = s.max_prompt_tokens if state.turn == 0 else self.engine.slot_capacity
        if len(prompt) > limit or not self.engine.fits(len(prompt), s.max_new_tokens):
            return None
        state.messages = messages
        # turn 0: nothing before the first user turn is the target's (a file's own assistant text is not)
        state.prompt_mask = self._prompt_mask(messages, prompt) if state.turn else [0] * len(prompt)
        rows = [j for j in range(len(prompt) - 1) if state.prompt_mask[j + 1]]
        temperature = state.temperature
        seed = sample_seed(s.seed, f"{state.conv.id}#{state.turn}")
        sampling = SamplingParams(temperature=temperature, top_p=MIX_TOP_P if temperature > 0 else 1.0, seed=seed)
        return GenerationRequest(state, prompt, s.max_new_tokens, sampling, rows)

    def _prompt_mask(self, messages: list[dict], prompt: list[int]) -> list[int]:
        """Earlier answers' tokens in this turn's prompt, as `data prepare` tokenizes them; all 0
        when the chat template does not extend the earlier turns' ids (then only the newest answer
        is trained on)."""
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        if last < 0:
            return [0] * len(prompt)
        ids, mask = tokenize_conversation(self.tok, Conversation("", "", messages[: last + 1]), self.eos_id)
        if prompt[: len(ids)] != ids:
            self.prefix_mismatches += 1
            return [0] * len(prompt)
        return mask + [0] * (len(prompt) - len(ids))

    def first_turns(self, pending: list[Conversation]):
        for conv in pending:
            temperature = draw_temperature(self.settings.seed, conv.id) if self.settings.temperature_mix else 0.0
            request = self.request(_Conversation(conv, temperature, []))
            if request is None:
                self.skipped += 1
                continue
            yield request

    def finished(self, result: Generated) -> None:
        """A turn ended: queue the next turn, or store the conversation when it was the last."""
        state: _Conversation = result.key
        answer = result.tokens[:-1] if result.finish_reason == "stop" else result.tokens
        answered = state.messages + [{"role": "assistant", "content": self.tok.decode(answer)}]
        self.new_tokens += len(result.tokens)
        turns = state.conv.user_turns()
        if state.turn + 1 < min(len(turns), self.settings.max_turns):
            following = _Conversation(state.conv, state.temperature, answered, state.turn + 1)
            request = self.request(following)
            if request is not None:
                self.next_turns.appendleft(request)
                return
        self._store(state, result, answered)

    def _store(self, state: _Conversation, result: Generated, answered: list[dict]) -> None:
        conv, s = state.conv, self.settings
        mask = state.prompt_mask + [1] * len(result.tokens)
        first = mask.index(1)
        keep = slice(max(0, first - s.context_keep), len(mask))
        tokens = result.prompt + result.tokens
        record = {
            "tokens": torch.tensor(tokens[keep], dtype=torch.int32),
            "answer_mask": torch.tensor(mask[keep], dtype=torch.uint8),
            "features": result.features[keep].to(FEATURE_DTYPE).cpu(),
            "topk_ids": result.topk_ids[keep],
            "topk_logprobs": result.topk_logprobs[keep].clamp(min=NO_LOGPROB).to(torch.float16),
        }
        row = {"id": conv.id, "source": conv.source, "messages": answered, "finish_reason": result.finish_reason,
               "temperature": state.temperature, "turns": state.turn + 1,
               "split": "heldout" if conv.heldout else "train"}  # fmt: skip
        self.store.add(row, record, conv.heldout)
        self.written += 1

    def run(self, pending: list[Conversation], done: int, total: int) -> None:
        first = self.first_turns(pending)
        t0 = time.perf_counter()

        def next_request() -> GenerationRequest | None:
            if self.next_turns:
                return self.next_turns.popleft()
            return next(first, None)

        status = ""
        for result in self.engine.run(next_request):
            self.finished(result)
            if self.report:
                rate = self.new_tokens / max(1e-9, time.perf_counter() - t0)
                e = self.engine
                status = f"{rate:.0f} tok/s, {e.reused / max(1, e.reused + e.prefilled):.0%} of prompt tokens cached"
                self.report("regen", done + self.written + self.skipped, total, status)
        self.store.flush()
        if self.report:  # prompts skipped after the last answer count too
            self.report("regen", done + self.written + self.skipped, total, status)


def regenerate(prompts: list[Path], out: Path, settings: RegenSettings, report: Reporter | None = None) -> int:
    """Answer every not-yet-answered conversation of `prompts` into the directory `out`, then
    write its draft vocabulary and manifest; returns the conversations written now."""
    from specblock.api import parse_dtype

    convs = select(prompts, settings)
    if not convs and settings.limit != 0:
        raise InvalidSettingError("no conversation with a user message in the prompt files")
    dtype = str(parse_dtype(settings.dtype, settings.device)).removeprefix("torch.")
    store = RegenStore(Path(out), settings.identity(dtype), settings.shard_size)
    finished = store.done_ids()
    pending = [c for c in convs if c.id not in finished]
    done, total = len(convs) - len(pending), len(convs)
    if report:
        report("regen", done, total)
    written = 0
    if pending:
        manifest_path = Path(out) / "manifest.json"
        if manifest_path.exists():  # until this run ends, the directory is not a finished data set
            write_json(manifest_path, json.loads(manifest_path.read_text()) | {"complete": False})
        job = _Regeneration(settings, store, report)
        job.run(pending, done, total)
        written = job.written
        if job.skipped:
            log.warning("skipped %d prompt(s) longer than --max-prompt-tokens or the batch slot", job.skipped)
        if job.prefix_mismatches:
            log.warning("%d later turn(s): the chat template re-tokenized earlier answers; only their newest answer "
                        "is trained on", job.prefix_mismatches)  # fmt: skip
    _finish(Path(out), settings, dtype, store, len(finished) + written)
    return written


def _finish(out: Path, settings: RegenSettings, dtype: str, store: RegenStore, conversations: int) -> None:
    """The manifest and the draft vocabulary (of `--vocab-size`, so a rerun can resize it)."""
    from specblock.models.resolve import resolve_model
    from specblock.target.config import ModelConfig
    from specblock.text import ChatTokenizer

    model_dir = resolve_model(settings.target)
    cfg = ModelConfig.from_dir(model_dir)
    manifest = {"settings": settings.identity(dtype), "conversations": conversations,
                "hidden_size": cfg.hidden_size, "feature_width": 3 * cfg.hidden_size,
                "target_vocab_size": cfg.vocab_size, "feature_layers": list(cfg.feature_layers),
                "complete": False}  # fmt: skip
    complete_manifest(out, manifest, store.shard_files(), settings.vocab_size, _eos_id(ChatTokenizer.load(model_dir), cfg))


def _eos_id(tok, cfg) -> int:
    """The end-of-turn token: the tokenizer's EOS, else the config's first."""
    eos = tok.eos_token_ids(cfg)
    if not eos:
        raise InvalidSettingError("neither the config nor the tokenizer names an EOS token")
    return tok.hf.eos_token_id if tok.hf.eos_token_id is not None else eos[0]
