"""Prompts to token ids (chat template or raw text) and token ids back to text."""

from __future__ import annotations

from pathlib import Path

from specblock.errors import InvalidSettingError, UnsupportedModelError
from specblock.target.config import ModelConfig


class ChatTokenizer:
    """A thin wrapper over the model directory's Hugging Face tokenizer."""

    def __init__(self, tokenizer) -> None:
        self.hf = tokenizer

    @classmethod
    def load(cls, model_dir: Path) -> "ChatTokenizer":
        from transformers import AutoTokenizer

        try:
            return cls(AutoTokenizer.from_pretrained(str(model_dir)))
        except Exception as exc:  # tokenizer libraries raise many types for missing or corrupt files
            raise UnsupportedModelError(f"cannot load a tokenizer from {model_dir}: {exc}") from None

    def encode(
        self,
        prompt: str | None = None,
        *,
        system: str | None = None,
        messages: list[dict] | None = None,
        raw: bool = False,
    ) -> list[int]:
        """Token ids of a request: the chat template is applied unless `raw`."""
        if messages is not None and (prompt is not None or system is not None):
            raise InvalidSettingError("give either messages or a prompt (with an optional system prompt), not both")
        if raw:
            if prompt is None or messages is not None or system is not None:
                raise InvalidSettingError("raw mode takes a prompt only (no system prompt or messages)")
            return list(self.hf(prompt).input_ids)
        if messages is None:
            if prompt is None:
                raise InvalidSettingError("give a prompt or a list of chat messages")
            messages = ([{"role": "system", "content": system}] if system is not None else []) + [
                {"role": "user", "content": prompt}
            ]
        _check_messages(messages)
        if not getattr(self.hf, "chat_template", None):
            raise InvalidSettingError("this model has no chat template: pass raw=True (--raw) to send plain text")
        text = self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.hf(text, add_special_tokens=False).input_ids)

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    def eos_token_ids(self, cfg: ModelConfig) -> tuple[int, ...]:
        """The config's EOS ids plus the tokenizer's own EOS (the chat end-of-turn token)."""
        ids = set(cfg.eos_token_ids)
        if self.hf.eos_token_id is not None:
            ids.add(self.hf.eos_token_id)
        return tuple(sorted(ids))

    def same_vocabulary(self, other: "ChatTokenizer") -> bool:
        return self.hf.get_vocab() == other.hf.get_vocab()


def _check_messages(messages: list[dict]) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidSettingError("messages must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
            "system",
            "user",
            "assistant",
        ):
            raise InvalidSettingError(f"message {i} must be an object with role system|user|assistant and text content")
