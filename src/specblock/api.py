"""The Python API: load a target and a drafting method once, then generate, stream, measure.

    from specblock import SpecGenerator
    gen = SpecGenerator.load("smollm2-135m", method="lookup")
    result = gen.generate("Write a haiku about the sea.", max_new_tokens=64)
    print(result.text, result.tau, result.tokens_per_s)
    for chunk in gen.stream(messages=[{"role": "user", "content": "Hi"}]):
        print(chunk.text, end="", flush=True)

The CLI is a thin layer over this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from specblock.adapt.drafter import AdaptiveDrafter, AdaptSettings
from specblock.budget import batch_budgets
from specblock.decoding import DecodeSettings, DecodeStats, speculative_decode
from specblock.drafters.base import Drafter
from specblock.drafters.vanilla import VanillaDrafter
from specblock.errors import InvalidSettingError
from specblock.methods import DEFAULT_BUDGET, budget_inputs, build_drafter, check_method, resolve_budget
from specblock.models.fetch import Reporter
from specblock.models.registry import DEFAULT_TARGET
from specblock.models.resolve import resolve_model
from specblock.sampling import SamplingParams
from specblock.target.cpu import auto_dtype
from specblock.target.runner import TargetRunner
from specblock.target.transformer import Transformer
from specblock.text import ChatTokenizer

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
    "int8": torch.int8,  # int8 weights (per channel), bf16 or fp32 activations: see target/kernels.py
}  # fmt: skip


def parse_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """A dtype by name; 'auto' is the fastest on this machine (`cpu.auto_dtype`)."""
    if name == "auto":
        return auto_dtype(device)
    if name == "int8" and not device.startswith("cpu"):
        raise InvalidSettingError("--dtype int8 runs on the CPU only (PyTorch's weight-only int8 CPU kernel)")
    if name not in DTYPES:
        raise InvalidSettingError(f"unknown dtype {name!r}; use one of auto, float32, bfloat16, float16, int8")
    return DTYPES[name]


def parse_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidSettingError(f"device {name!r} asked for, but no CUDA device is available")
    if name.startswith("cuda:"):
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise InvalidSettingError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if not (name == "cpu" or name.startswith("cuda")):
        raise InvalidSettingError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")
    return name


@dataclass
class GenerationResult:
    """One request's output and measurements. tau = new_tokens / target forwards (prefill included)."""

    token_ids: list[int]
    text: str
    prompt_tokens: int
    new_tokens: int
    iterations: int  # target forwards, the prefill included
    tau: float
    drafter_forwards: int
    wall_s: float
    prefill_s: float
    tokens_per_s: float  # new tokens / whole wall time, prefill included
    decode_tokens_per_s: float  # tokens after the first / time after the prefill
    draft_ms_per_iteration: float
    target_ms_per_iteration: float
    mean_tree_nodes: float
    stop_reason: str
    method: str
    node_budget: int
    dtype: str = ""  # the target's compute dtype (what --dtype auto chose)
    accepted_lengths: list[int] = field(default_factory=list)
    draft_ms: list[float] = field(default_factory=list)  # drafter time of each iteration (propose + observe)
    target_ms: list[float] = field(default_factory=list)  # verify forward + acceptance of each iteration

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_stats(
        cls, stats: DecodeStats, token_ids: list[int], text: str, method: str, budget: int, dtype: str = ""
    ) -> "GenerationResult":
        iters = max(len(stats.target_s), 1)
        decode_s = stats.wall_s - stats.prefill_s
        return cls(
            token_ids=token_ids,
            text=text,
            prompt_tokens=stats.prompt_tokens,
            new_tokens=stats.new_tokens,
            iterations=stats.target_forwards,
            tau=stats.new_tokens / stats.target_forwards,
            drafter_forwards=stats.drafter_forwards,
            wall_s=stats.wall_s,
            prefill_s=stats.prefill_s,
            tokens_per_s=stats.new_tokens / stats.wall_s,
            decode_tokens_per_s=(stats.new_tokens - 1) / decode_s if decode_s > 0 else 0.0,
            draft_ms_per_iteration=1000 * sum(stats.draft_s) / iters,
            target_ms_per_iteration=1000 * sum(stats.target_s) / iters,
            mean_tree_nodes=sum(stats.tree_sizes) / iters,
            stop_reason=stats.stop_reason,
            method=method,
            node_budget=budget,
            dtype=dtype,
            accepted_lengths=stats.accepted_lengths,
            draft_ms=[round(1000 * t, 3) for t in stats.draft_s],
            target_ms=[round(1000 * t, 3) for t in stats.target_s],
        )


@dataclass
class TextChunk:
    token_ids: list[int]  # tokens accepted in this iteration
    text: str  # the text they add (may lag a token behind on split UTF-8 characters)


class GenerationStream:
    """Iterate to receive chunks as they are accepted; `.result` is set once iteration ends.

    A generator serves one request at a time (it owns one KV cache): starting a new stream
    cancels an unfinished one, which then raises if iterated further.
    """

    def __init__(
        self, steps: Iterator[list[int]], tokenizer: ChatTokenizer, method: str, budget: int, dtype: str = ""
    ) -> None:
        self._steps = steps
        self._dtype = dtype
        self._tokenizer = tokenizer
        self._method = method
        self._budget = budget
        self._generated: list[int] = []
        self._emitted = ""
        self.cancelled = False
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[TextChunk]:
        while self.result is None:
            if self.cancelled:
                raise InvalidSettingError("this stream was cancelled: a newer request started on the same generator")
            try:
                new = next(self._steps)
            except StopIteration as stop:
                text = self._tokenizer.decode(self._generated)
                self.result = GenerationResult.from_stats(
                    stop.value, self._generated, text, self._method, self._budget, self._dtype
                )
                if len(text) > len(self._emitted):
                    yield TextChunk([], text[len(self._emitted) :])
                return
            self._generated.extend(new)
            text = self._tokenizer.decode(self._generated)
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
                yield TextChunk(new, "")
                continue
            delta, self._emitted = text[len(self._emitted) :], text
            yield TextChunk(new, delta)

    def finish(self) -> GenerationResult:
        """Run to the end (continuing where iteration stopped) and return the result."""
        for _ in self:
            pass
        return self.result


class SpecGenerator:
    """A loaded target with one drafting method; reusable across requests."""

    def __init__(
        self, target: Transformer, tokenizer: ChatTokenizer, drafter: Drafter, method: str, node_budget: int,
        target_name: str | Path = "", budget_is_auto: bool = False,
    ) -> None:  # fmt: skip
        self.target = target
        self.target_name = str(target_name)
        self.budget_is_auto = budget_is_auto  # the budget came from --node-budget auto
        self.tokenizer = tokenizer
        self.drafter = drafter
        self.method = method
        self.node_budget = node_budget
        self.runner = TargetRunner(target)
        self._active: GenerationStream | None = None

    @classmethod
    def load(
        cls,
        target: str | Path = DEFAULT_TARGET,
        method: str = "lookup",
        *,
        dtype: str = "auto",
        device: str = "cpu",
        node_budget: int | str | None = None,
        draft_model: str | Path | None = None,
        drafter: str | Path | None = None,
        report: Reporter | None = None,
    ) -> "SpecGenerator":
        """Resolve (and on first use fetch) the target, load it, and build the drafter for `method`.

        `node_budget` is a number of draft nodes or "auto"; `drafter` is a trained SpecBlock /
        EAGLE-3 checkpoint directory (default: the shipped one for the target, if any).
        """
        check_method(method)  # before the (slow) model load
        device = parse_device(device)
        torch_dtype = parse_dtype(dtype, device)
        model_dir = resolve_model(target, report=report)
        model = Transformer.load(model_dir, torch_dtype, device)
        tokenizer = ChatTokenizer.load(model_dir)
        return cls._assemble(model, tokenizer, method, target, node_budget, draft_model, drafter, report)

    def with_method(
        self, method: str, *, node_budget: int | str | None = None, draft_model: str | Path | None = None,
        drafter: str | Path | None = None, target_name: str | Path | None = None,
    ) -> "SpecGenerator":  # fmt: skip
        """Another generator on the same loaded target (no second copy of the weights) with another method."""
        name = target_name or ""
        return self._assemble(self.target, self.tokenizer, method, name, node_budget, draft_model, drafter, None)

    @classmethod
    def _assemble(
        cls, model: Transformer, tokenizer: ChatTokenizer, method: str, target_name: str | Path,
        node_budget: int | str | None, draft_model: str | Path | None, drafter_dir: str | Path | None,
        report: Reporter | None,
    ) -> "SpecGenerator":  # fmt: skip
        """Build `method`'s drafter and budget around an already loaded target."""
        check_method(method)
        drafter = build_drafter(
            method, model, tokenizer, target_name, draft_model, model.dtype, str(model.device), report, drafter_dir
        )  # fmt: skip
        asked = DEFAULT_BUDGET[method] if node_budget is None else node_budget
        budget = resolve_budget(asked, model, target_name, drafter)
        is_auto = isinstance(asked, str) and asked.strip().lower() == "auto"
        return cls(model, tokenizer, drafter, method, budget, target_name, is_auto)

    def batch_budgets(self, max_batch: int) -> dict[int, int] | None:
        """With an `auto` budget: the node budget per request for each batch size of the server
        (`budget.batch_budgets`); None for a fixed budget, which every batch size keeps."""
        if not self.budget_is_auto or isinstance(self.drafter, VanillaDrafter):
            return None
        profile, calibration, measured = budget_inputs(self.target, self.target_name, self.drafter)
        return batch_budgets(profile, calibration, max_batch, draft_s=measured)

    def stream(
        self,
        prompt: str | None = None,
        *,
        system: str | None = None,
        messages: list[dict] | None = None,
        raw: bool = False,
        input_ids: list[int] | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: list[str] | tuple[str, ...] = (),
    ) -> GenerationStream:
        """Start a request; iterate the returned stream for text chunks, then read `.result`."""
        if input_ids is not None:
            if prompt is not None or messages is not None or system is not None:
                raise InvalidSettingError("give input_ids or a prompt / messages, not both")
            ids = _checked_ids(input_ids, self.target.cfg.vocab_size)
        else:
            ids = self.tokenizer.encode(prompt, system=system, messages=messages, raw=raw)
        if isinstance(stop, str):
            stop = (stop,)
        settings = DecodeSettings(
            max_new_tokens=max_new_tokens,
            sampling=SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed),
            node_budget=self.node_budget,
            eos_token_ids=self.tokenizer.eos_token_ids(self.target.cfg),
            stop_strings=tuple(stop),
        )
        if self._active is not None and self._active.result is None:
            self._active.cancelled = True
        steps = speculative_decode(self.runner, self.drafter, list(ids), settings, self.tokenizer.decode)
        self._active = GenerationStream(steps, self.tokenizer, self.method, self.node_budget, self.target.dtype_name)
        return self._active

    def generate(self, prompt: str | None = None, **kwargs) -> GenerationResult:
        """Run a request to the end; takes the same arguments as `stream`."""
        return self.stream(prompt, **kwargs).finish()

    def enable_adaptation(self, settings: AdaptSettings | None = None) -> AdaptiveDrafter:
        """From now on the drafter keeps learning from the verifier's feedback, across the
        requests of this generator (design §8); the output stays exactly the target's."""
        if not isinstance(self.drafter, AdaptiveDrafter):
            source = getattr(self.drafter, "source_dir", None)
            self.drafter = AdaptiveDrafter(self.drafter, self.node_budget, settings, source=source)
        return self.drafter

    def save_adapted_drafter(self, out: str | Path) -> Path:
        """Write the adapted drafter to a new checkpoint directory (the original stays as it was)."""
        if not isinstance(self.drafter, AdaptiveDrafter):
            raise InvalidSettingError("adaptation is not enabled on this generator (use --adapt / enable_adaptation)")
        return self.drafter.save(out)


def _checked_ids(ids: list[int], vocab_size: int) -> list[int]:
    out = list(ids)
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in out):
        raise InvalidSettingError(f"input_ids must be integers in [0, {vocab_size})")
    return out
