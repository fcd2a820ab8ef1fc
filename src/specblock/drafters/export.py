"""Export an EAGLE-3 drafter in the layout SGLang and vLLM load (`LlamaForCausalLMEagle3`).

Both engines read a Hugging Face style directory: `config.json` (a one-layer Llama config plus
`draft_vocab_size` and the capture layers) and `model.safetensors` with the keys

    fc.weight                                   3*H_t -> H fusion of the target features
    midlayer.input_layernorm.weight             norm of the token embedding
    midlayer.hidden_norm.weight                 norm of the fused hidden
    midlayer.self_attn.{q,k,v,o}_proj.weight    q/k/v take the 2H concatenation [embed ; hidden]
    midlayer.post_attention_layernorm.weight
    midlayer.mlp.{gate,up,down}_proj.weight
    norm.weight, lm_head.weight                 lm_head over the draft vocabulary
    d2t                                         int64, target id = draft id + d2t[draft id]
    t2d                                         bool over the target vocabulary (both engines skip it)

which are exactly our own names. SGLang (`python/sglang/srt/models/llama_eagle3.py`) prefixes
`model.`, stacks q/k/v and gate/up, and turns `d2t` into `hot_token_id = d2t + arange`; vLLM
(`vllm/model_executor/models/llama_eagle3.py`) renames `midlayer.` to `layers.0.` and `d2t` to
`draft_id_to_target_id`. Neither needs the embeddings: without `embed_tokens` in the file both
share the target's, so they are not written (as in our own checkpoints).
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from specblock.drafters.checkpoint import drafter_state, load_drafter, read_config, swap_in
from specblock.errors import SpecBlockError
from specblock.target.config import ModelConfig

EXPORT_ARCHITECTURE = "LlamaForCausalLMEagle3"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def aux_layer_ids(target_cfg: ModelConfig) -> tuple[list[int], list[int]]:
    """The captured target layers in SGLang's and in vLLM's numbering.

    Our features are Hugging Face hidden-state indices `ModelConfig.feature_layers` = (2, L//2, L-3)
    (index 0 = the embedding output, index i = the output of decoder layer i-1); the transformer
    captures them after layers `Transformer._capture_after` = index - 1, i.e. layers (1, L//2-1, L-4).
    - SGLang reads `eagle_config.eagle_aux_hidden_state_layer_ids` as the layers whose OUTPUT is
      captured (it captures before layer id+1), so it gets (1, L//2-1, L-4).
    - vLLM captures `hidden_states + residual` BEFORE layer id, i.e. ids are hidden-state indices, so it
      gets (2, L//2, L-3). It reads the top-level `eagle_aux_hidden_state_layer_ids` first (newer
      versions fall back to `eagle_config`), which lets one config.json serve both engines.
    Without explicit ids both engines default to (2, L//2, L-3) hidden-state indices, the same layers.
    """
    hf_indices = list(target_cfg.feature_layers)
    return [i - 1 for i in hf_indices], hf_indices


def load_for_export(drafter_dir: Path, target_dir: Path, engines: str) -> tuple:
    """The EAGLE-3 drafter of `drafter_dir` checked against its target: (model, target config,
    the dtype name it was saved in). `engines` names the destination in error messages."""
    config = read_config(drafter_dir)
    method = config.get("method")
    if method != "eagle3":
        raise SpecBlockError(
            f"{drafter_dir} holds a {method!r} drafter; only EAGLE-3 drafters can be exported "
            f"({engines} have no SpecBlock drafter)"
        )
    target_cfg = ModelConfig.from_dir(target_dir)
    dtype_name = str(config.get("torch_dtype", "float16"))
    if dtype_name not in DTYPES:
        raise SpecBlockError(f"{drafter_dir}/config.json has an unsupported torch_dtype {dtype_name!r}")
    hf_indices = list(target_cfg.feature_layers)
    if any(b <= a for a, b in itertools.pairwise(hf_indices)):
        # The engines capture each layer once, in layer order; our clamped tiny-model choice repeats
        # or reorders layers, which no engine reproduces.
        raise SpecBlockError(
            f"target {target_dir} has {target_cfg.num_layers} layers, too few for the engines' EAGLE-3 "
            f"capture: the feature layers {tuple(hf_indices)} must be distinct and increasing (at least 7 layers)"
        )
    # Checks the drafter against the target (hidden size, vocabulary), the weight shapes and the
    # d2t/t2d maps; an empty embedding stands in for the target's, which is not exported.
    model = load_drafter(drafter_dir, target_cfg, torch.zeros(0, target_cfg.hidden_size), method="eagle3")
    return model, target_cfg, dtype_name


def export_sglang(drafter_dir: Path, out: Path, target_dir: Path) -> None:
    """Write `out/config.json` + `out/model.safetensors` for SGLang's / vLLM's EAGLE-3 Llama drafter."""
    drafter_dir, out, target_dir = Path(drafter_dir), Path(out), Path(target_dir)
    model, target_cfg, dtype_name = load_for_export(drafter_dir, target_dir, "SGLang and vLLM")
    sglang_ids, vllm_ids = aux_layer_ids(target_cfg)
    c = model.cfg
    state = drafter_state(model, DTYPES[dtype_name])
    state["d2t"] = state["d2t"].to(torch.int64)
    state["t2d"] = state["t2d"].to(torch.bool)
    export_config = {
        "architectures": [EXPORT_ARCHITECTURE],
        "model_type": "llama",
        "hidden_size": c.hidden_size,
        "target_hidden_size": c.target_hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "num_hidden_layers": 1,
        "vocab_size": c.target_vocab_size,
        "draft_vocab_size": c.draft_vocab_size,
        "rms_norm_eps": c.rms_norm_eps,
        # The drafter's own RoPE base (what it was trained with), plain RoPE without scaling.
        "rope_theta": c.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": target_cfg.max_position_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": dtype_name,
        "eagle_aux_hidden_state_layer_ids": vllm_ids,  # vLLM: hidden-state indices
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": sglang_ids, "use_aux_hidden_state": True},  # SGLang
    }
    _write_atomically(out, drafter_dir, export_config, state)


def _write_atomically(out: Path, drafter_dir: Path, config: dict, state: dict[str, torch.Tensor]) -> None:
    if out.resolve() == drafter_dir.resolve():
        raise SpecBlockError(f"--out {out} is the drafter directory itself; choose another directory")
    if out.exists() and not _replaceable(out):
        raise SpecBlockError(f"{out} exists and is not an earlier export; remove it or choose another --out")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SpecBlockError(f"cannot write {out}: {exc}") from None
    swap_in(tmp, out)


def _replaceable(out: Path) -> bool:
    """An empty directory or one an earlier export wrote (never clobber anything else)."""
    if not out.is_dir():
        return False
    if not any(out.iterdir()):
        return True
    try:
        return json.loads((out / "config.json").read_text()).get("architectures") == [EXPORT_ARCHITECTURE]
    except (OSError, ValueError, AttributeError):
        return False
