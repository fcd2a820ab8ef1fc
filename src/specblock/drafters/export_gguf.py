"""Export an EAGLE-3 drafter as a GGUF file that llama.cpp runs (`--spec-type draft-eagle3`).

It follows what llama.cpp's own converter writes for an EAGLE-3 checkpoint
(`convert_hf_to_gguf.py --target-model-dir`, class `LlamaModel` in the pinned sources):

- architecture `eagle3`; the usual Llama keys under `eagle3.` from the drafter's config (one
  block, heads, head size, RoPE base, RMS epsilon, the target's vocabulary size), plus
  `eagle3.target_layers` (the three captured hidden-state indices, INT32: llama.cpp takes
  the input of layer id, i.e. Hugging Face `hidden_states[id]`, our `feature_layers`),
  `eagle3.target_hidden_size` and `eagle3.norm_before_residual` / `norm_before_fc` (false:
  our residual is the pre-norm hidden and `fc` reads the raw features);
- tensors renamed: `fc.weight`; `midlayer.input_layernorm` -> `blk.0.attn_norm`,
  `hidden_norm` -> `blk.0.attn_norm_2`, `self_attn.{q,k,v,o}_proj` -> `blk.0.attn_{q,k,v,output}`,
  `post_attention_layernorm` -> `blk.0.ffn_norm`, `mlp.{gate,up,down}_proj` -> `blk.0.ffn_*`,
  `norm` -> `output_norm`, `lm_head` -> `output`; norms in F32, matrices in F16;
- q and k rows reordered from Hugging Face's rotate-half RoPE pairs (d, d + D/2) to the
  adjacent pairs (2d, 2d + 1) of llama.cpp's Llama RoPE;
- `d2t` as absolute target ids (I64), `t2d` left out; no token embeddings (llama.cpp takes the
  target's);
- the tokenizer (`tokenizer.*` keys) copied from the target's own GGUF file, which fixes the
  draft logits' width and the range of `d2t`.

Note: the pinned llama.cpp extracts target features only for some architectures (Llama,
Qwen3, ...); for a Qwen2 target such as qwen2.5-coder, scripts/build_llama_cpp.sh adds the
missing line to llama.cpp's Qwen2 graph (docs/drafters.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from specblock.drafters.export import load_for_export
from specblock.errors import SpecBlockError

ARCH = "eagle3"
# llama.cpp architectures whose graphs expose the layer inputs EAGLE-3 reads (pinned sources)
FEATURE_ARCHS = {"llama", "qwen3", "qwen3moe", "gemma4", "lfm2"}
TENSOR_NAMES = {
    "fc.weight": "fc.weight",
    "midlayer.input_layernorm.weight": "blk.0.attn_norm.weight",
    "midlayer.hidden_norm.weight": "blk.0.attn_norm_2.weight",
    "midlayer.self_attn.q_proj.weight": "blk.0.attn_q.weight",
    "midlayer.self_attn.k_proj.weight": "blk.0.attn_k.weight",
    "midlayer.self_attn.v_proj.weight": "blk.0.attn_v.weight",
    "midlayer.self_attn.o_proj.weight": "blk.0.attn_output.weight",
    "midlayer.post_attention_layernorm.weight": "blk.0.ffn_norm.weight",
    "midlayer.mlp.gate_proj.weight": "blk.0.ffn_gate.weight",
    "midlayer.mlp.up_proj.weight": "blk.0.ffn_up.weight",
    "midlayer.mlp.down_proj.weight": "blk.0.ffn_down.weight",
    "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def rope_pairs_adjacent(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q or k projection reordered per head so that the RoPE pair (d, d + D/2) of
    rotate-half lands on rows (2d, 2d + 1), where interleaved RoPE rotates."""
    rows, cols = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, cols).transpose(1, 2).reshape(rows, cols)


def _target_tokenizer(target_gguf: Path, vocab_size: int) -> tuple[str, list]:
    """The target GGUF's architecture and its `tokenizer.*` fields as (key, value, type, subtype)."""
    from gguf import GGUFReader, GGUFValueType

    try:
        reader = GGUFReader(str(target_gguf))
    except (OSError, ValueError) as exc:
        raise SpecBlockError(f"cannot read the target GGUF {target_gguf}: {exc}") from None
    fields = []
    for name, field in reader.fields.items():
        if name.startswith("tokenizer."):
            sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
            fields.append((name, field.contents(), field.types[0], sub))
    tokens = next((value for name, value, _, _ in fields if name == "tokenizer.ggml.tokens"), None)
    if tokens is None:
        raise SpecBlockError(f"{target_gguf} has no tokenizer (tokenizer.ggml.tokens): is it the target's GGUF?")
    if len(tokens) != vocab_size:
        raise SpecBlockError(
            f"{target_gguf} has {len(tokens)} tokens, the drafter's target has {vocab_size}: not the same model"
        )
    arch = reader.fields["general.architecture"].contents() if "general.architecture" in reader.fields else "?"
    return str(arch), fields


def export_gguf(drafter_dir: Path, out: Path, target_dir: Path, target_gguf: Path) -> str:
    """Write `out` (one .gguf file); returns the target GGUF's architecture."""
    from gguf import GGUFWriter, LlamaFileType

    drafter_dir, out = Path(drafter_dir), Path(out)
    model, target_cfg, _ = load_for_export(drafter_dir, Path(target_dir), "llama.cpp")
    c = model.cfg
    arch, tokenizer = _target_tokenizer(Path(target_gguf), c.target_vocab_size)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items() if k in TENSOR_NAMES}
    state["midlayer.self_attn.q_proj.weight"] = rope_pairs_adjacent(
        state["midlayer.self_attn.q_proj.weight"], c.num_attention_heads
    )
    state["midlayer.self_attn.k_proj.weight"] = rope_pairs_adjacent(
        state["midlayer.self_attn.k_proj.weight"], c.num_key_value_heads
    )
    d2t = (model.d2t.cpu() + torch.arange(c.draft_vocab_size)).to(torch.int64)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    writer = GGUFWriter(str(tmp), ARCH)
    writer.add_name(f"specblock EAGLE-3 drafter for {target_cfg.model_type}")
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    writer.add_block_count(1)
    writer.add_context_length(target_cfg.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.target_vocab_size)
    writer.add_array(f"{ARCH}.target_layers", [int(i) for i in target_cfg.feature_layers])
    writer.add_uint32(f"{ARCH}.target_hidden_size", c.target_hidden_size)
    writer.add_bool(f"{ARCH}.norm_before_residual", False)
    writer.add_bool(f"{ARCH}.norm_before_fc", False)
    for name, value, vtype, sub in tokenizer:
        writer.add_key_value(name, value, vtype, sub_type=sub)
    for source, name in TENSOR_NAMES.items():
        t = state[source]
        writer.add_tensor(name, t.numpy().astype(np.float32 if t.dim() == 1 else np.float16))
    writer.add_tensor("d2t", d2t.numpy())
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SpecBlockError(f"cannot write {out}: {exc}") from None
    return arch
