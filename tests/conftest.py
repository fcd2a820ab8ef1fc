"""Tiny randomly initialised Llama / Qwen2 / Qwen3 models (with a character tokenizer) built per session."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<unk>", "<|im_start|>", "<|im_end|>"]
CHARS = list(string.ascii_letters + string.digits + " .,!?'\n:-")
VOCAB = 128


def save_char_tokenizer(out: Path) -> None:
    """A character-level fast tokenizer: ids 0-2 special, then one id per character."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.add_special_tokens(SPECIALS)
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|im_end|>", bos_token="<|im_start|>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(out))


def exact_dtype() -> torch.dtype:
    """bf16 where this CPU's bf16 verification is batch-invariant (the kernel table: Zen 4,
    Zen 5 and the AMX Xeon so far), else fp32: the dtype in which a batched request's greedy
    output must equal its solo output token for token. fp32 is batch-invariant where the table
    finds it so; elsewhere its rounding (~1e-7) is far below a tiny random model's logit gaps:
    equal outputs there are a fixed fact of the machine, not luck that varies between runs."""
    from specblock.target.kernels import kernel_table

    return torch.bfloat16 if kernel_table()["bfloat16"].invariant else torch.float32


def randomise_(model: torch.nn.Module, std: float) -> None:
    """Norm weights ~ N(1, 0.1), every other weight ~ N(0, std): a model with sharp, varied outputs."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, std)


def build_tiny_model(
    out: Path, arch: str = "llama", seed: int = 0, layers: int = 4, vocab: int = VOCAB, std: float = 0.25,
    max_positions: int = 512, tokenizer: bool = True, hidden: int = 64,
) -> Path:  # fmt: skip
    """Save a random model of the given family to `out` (safetensors + config [+ tokenizer])."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    }
    config_cls, model_cls = classes[arch]
    torch.manual_seed(seed)
    cfg = config_cls(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=max_positions,
        tie_word_embeddings=arch == "llama", eos_token_id=2, bos_token_id=1, rope_theta=10000.0,
    )  # fmt: skip
    model = model_cls(cfg).eval()
    randomise_(model, std)
    model.save_pretrained(str(out))
    if tokenizer:
        save_char_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), "llama", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_qwen2"), "qwen2", seed=1)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_qwen3"), "qwen3", seed=2)


@pytest.fixture(scope="session")
def tiny_draft_llama(tmp_path_factory) -> Path:
    """A different random Llama with the same vocabulary: a weak but honest draft model."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_draft"), "llama", seed=7, layers=2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep tests away from the user's model cache unless a test opts in (real-model tests)."""
    monkeypatch.setenv("SPECBLOCK_CACHE", str(tmp_path / "cache"))
