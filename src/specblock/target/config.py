"""Architecture description of a target read from a Hugging Face `config.json`.

One small dataclass covers the Llama, Qwen2 and Qwen3 families: they differ only by
q/k/v biases (Qwen2) and per-head q/k RMSNorm (Qwen3).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from specblock.errors import UnsupportedModelError
from specblock.target.primitives import inverse_frequencies

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None

    @property
    def feature_layers(self) -> tuple[int, int, int]:
        """Hidden-state indices captured for drafters (HF `output_hidden_states` indexing, design §3)."""
        n = self.num_layers
        return tuple(min(max(i, 0), n) for i in (2, n // 2, n - 3))  # clamped for tiny test models

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        if not isinstance(raw, dict):
            raise UnsupportedModelError("config.json must hold a JSON object")
        try:
            return cls._from_dict(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsupportedModelError(f"config.json is missing or has an invalid setting: {exc}") from None

    @classmethod
    def _from_dict(cls, raw: dict) -> "ModelConfig":
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"unsupported architecture {model_type!r}: specblock runs the "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} families"
            )
        num_heads = raw["num_attention_heads"]
        hidden = raw["hidden_size"]
        head_dim = raw.get("head_dim") or hidden // num_heads
        rope_params = raw.get("rope_parameters") or {}
        rope_theta = rope_params.get("rope_theta", raw.get("rope_theta", 10000.0))
        scaling = raw.get("rope_scaling") or (rope_params if rope_params else None)
        scaling = _normalise_rope_scaling(scaling)
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        if model_type == "qwen2":
            attention_bias = True
        else:
            attention_bias = bool(raw.get("attention_bias", False))
        if raw.get("mlp_bias"):
            raise UnsupportedModelError("unsupported setting mlp_bias=true")
        return cls(
            model_type=model_type,
            vocab_size=raw["vocab_size"],
            hidden_size=hidden,
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=raw.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            qk_norm=model_type == "qwen3",
            eos_token_ids=eos_ids,
            bos_token_id=raw.get("bos_token_id"),
        )

    @classmethod
    def from_dir(cls, model_dir: Path) -> "ModelConfig":
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise UnsupportedModelError(f"{model_dir} has no config.json: not a Hugging Face model directory")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UnsupportedModelError(f"{path} is not valid JSON ({exc})") from None
        return cls.from_dict(raw)


def _normalise_rope_scaling(scaling: dict | None) -> dict | None:
    """Return None for plain RoPE, else the scaling dict; reject types we do not implement."""
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return None
    if kind not in ("linear", "llama3"):
        raise UnsupportedModelError(f"unsupported RoPE scaling {kind!r} (supported: default, linear, llama3)")
    return dict(scaling, rope_type=kind)


def rope_inverse_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """Per-pair inverse frequencies (float32) of the rotary embedding, with Llama-3 / linear scaling.

    Computed in float32 the way Hugging Face does, so positions rotate identically.
    """
    inv = inverse_frequencies(cfg.head_dim, cfg.rope_theta)
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv
    if scaling["rope_type"] == "linear":
        return inv / float(scaling["factor"])
    # llama3: long wavelengths are divided by `factor`, short ones kept, a smooth blend between.
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv / factor + smooth * inv
    out = torch.where(wavelen > low_wavelen, inv / factor, inv)
    middle = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(middle, blended, out)
