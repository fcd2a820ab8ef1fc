"""Convert a GGUF file into a Hugging Face style directory (config, tokenizer, safetensors).

Tensors are de-quantised and written one at a time into a single float32 safetensors
file, so converting a 1.5B model needs memory for one tensor, not for the whole model.
The tokenizer and config come from `transformers`' GGUF metadata readers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from specblock.errors import UnsupportedModelError

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_SKIPPED = {"rope_freqs.weight"}  # recomputed from the config
SUPPORTED_GGUF_ARCHS = ("llama", "qwen2", "qwen3")


def hf_tensor_name(gguf_name: str) -> str | None:
    """Hugging Face name of a GGUF tensor; None for tensors the HF format does not store."""
    if gguf_name in _SKIPPED:
        return None
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    raise UnsupportedModelError(f"GGUF tensor {gguf_name!r} has no known Hugging Face counterpart")


def unpermute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of q/k rows (its converter permutes them for Llama models)."""
    rows = weight.shape[0]
    rest = weight.shape[1:]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def _field(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def convert_gguf(
    gguf_path: Path, out_dir: Path, on_tensor: Callable[[int, int], None] | None = None
) -> None:
    """Write config.json, tokenizer files and model.safetensors for `gguf_path` into `out_dir`."""
    import gguf  # imported lazily: only conversion needs it

    reader = gguf.GGUFReader(str(gguf_path))
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHS:
        raise UnsupportedModelError(f"unsupported GGUF architecture {arch!r} (supported: {', '.join(SUPPORTED_GGUF_ARCHS)})")
    n_heads = int(_field(reader, f"{arch}.attention.head_count"))
    n_kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv") or n_heads)
    out_dir.mkdir(parents=True, exist_ok=True)
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    _save_config_and_tokenizer(gguf_path, out_dir, tie_embeddings=not has_output)

    write_safetensors(reader, arch, n_heads, n_kv_heads, out_dir / "model.safetensors", on_tensor)


def write_safetensors(
    reader, arch: str, n_heads: int, n_kv_heads: int, path: Path, on_tensor: Callable[[int, int], None] | None = None
) -> None:
    """Stream every GGUF tensor, de-quantised to float32 under its HF name, into one safetensors file."""
    import gguf

    plan = []
    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name)
        if name is not None:
            shape = [int(d) for d in reversed(tensor.shape.tolist())]
            plan.append((name, shape, tensor))
    header: dict[str, dict] = {"__metadata__": {"format": "pt", "format_source": "gguf"}}
    offset = 0
    for name, shape, _ in plan:
        nbytes = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw_header = json.dumps(header, separators=(",", ":")).encode()
    raw_header += b" " * (-len(raw_header) % 8)
    with open(path, "wb") as f:
        f.write(len(raw_header).to_bytes(8, "little"))
        f.write(raw_header)
        for i, (name, shape, tensor) in enumerate(plan):
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(shape)
            if arch == "llama" and name.endswith("q_proj.weight"):
                values = unpermute_rotary(values, n_heads)
            elif arch == "llama" and name.endswith("k_proj.weight"):
                values = unpermute_rotary(values, n_kv_heads)
            f.write(np.ascontiguousarray(values).tobytes())
            if on_tensor is not None:
                on_tensor(i + 1, len(plan))


def _save_config_and_tokenizer(gguf_path: Path, out_dir: Path, tie_embeddings: bool) -> None:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    config.tie_word_embeddings = tie_embeddings  # a GGUF without output.weight reuses the embeddings
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    config.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
