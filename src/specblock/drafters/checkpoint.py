"""Drafter checkpoints: `config.json` + `model.safetensors` (with the `d2t`/`t2d` maps).

The frozen target embeddings are never saved; the loader copies them from the target.
Loading checks the drafter against the target it is meant for (hidden size, vocabulary,
feature width, and the fingerprint of the target's embeddings saved with it) and reports any
mismatch in one clear sentence. No pickles are read.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from specblock.drafters.eagle3_model import Eagle3Config, Eagle3Model
from specblock.drafters.specblock_model import SpecBlockConfig, SpecBlockModel
from specblock.errors import SpecBlockError

DrafterModel = SpecBlockModel | Eagle3Model


def build_model(config: dict) -> DrafterModel:
    method = config.get("method")
    if method == "specblock":
        return SpecBlockModel(SpecBlockConfig.from_dict(config))
    if method == "eagle3":
        return Eagle3Model(Eagle3Config.from_dict(config))
    raise SpecBlockError(f"unknown drafter method {method!r} in config.json (expected specblock or eagle3)")


def drafter_state(model: DrafterModel, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Trainable weights (cast to `dtype`) plus the vocabulary maps, without the embeddings."""
    state = {}
    for name, t in model.state_dict().items():
        if name == "embed_tokens":
            continue
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        state[name] = t.contiguous().cpu()
    return state


FINGERPRINT_VALUES = 32


def target_fingerprint(embed: torch.Tensor) -> list[float]:
    """The target's token embeddings at 32 fixed places spread over the table. Compared with a
    tolerance (`same_target`), so the target's compute dtype (fp32, bf16, fp16) does not matter,
    while another model of the same shapes differs at almost every place."""
    rows, cols = embed.shape
    n = torch.arange(FINGERPRINT_VALUES)
    flat = embed.detach()[(n * (rows - 1)) // (FINGERPRINT_VALUES - 1), (n * 37) % cols]
    return [round(float(v), 5) for v in flat.float().cpu()]


def same_target(saved: list[float], embed: torch.Tensor) -> bool:
    here = torch.tensor(target_fingerprint(embed))
    return len(saved) == len(here) and torch.allclose(torch.tensor(saved), here, rtol=1e-2, atol=1e-3)


def save_drafter(model: DrafterModel, out: Path, dtype: torch.dtype = torch.float16, meta: dict | None = None) -> None:
    """Write the checkpoint atomically (a temporary directory renamed into place), with the
    fingerprint of the target whose embeddings the drafter holds."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = model.cfg.to_dict() | {"torch_dtype": str(dtype).removeprefix("torch."), **(meta or {})}
    if model.embed_tokens.numel():
        config["target_fingerprint"] = target_fingerprint(model.embed_tokens)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(drafter_state(model, dtype), str(tmp / "model.safetensors"))
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise SpecBlockError(f"{out} exists and is not a drafter checkpoint: refusing to replace it")
    swap_in(tmp, out)


def swap_in(tmp: Path, out: Path) -> None:
    """Put a finished temporary directory at `out`, replacing what was there."""
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def read_config(path: Path) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except FileNotFoundError:
        raise SpecBlockError(f"{path} is not a drafter checkpoint (no config.json)") from None
    except json.JSONDecodeError as exc:
        raise SpecBlockError(f"{path}/config.json is not valid JSON: {exc}") from None


def load_drafter(path: Path, target_cfg, embed: torch.Tensor, method: str | None = None) -> DrafterModel:
    """Read a checkpoint and attach the target's embeddings, checking it fits that target."""
    path = Path(path)
    config = read_config(path)
    if method is not None and config.get("method") != method:
        raise SpecBlockError(f"{path} holds a {config.get('method')!r} drafter, not a {method!r} one")
    try:
        model = build_model(config)
    except TypeError as exc:
        raise SpecBlockError(f"{path}/config.json lacks drafter settings: {exc}") from None
    c = model.cfg
    if c.target_hidden_size != target_cfg.hidden_size or c.hidden_size != embed.shape[1]:
        raise SpecBlockError(
            f"drafter {path} was trained for a target of hidden size {c.target_hidden_size}, "
            f"but this target's hidden size is {target_cfg.hidden_size}"
        )
    if c.target_vocab_size != target_cfg.vocab_size:
        raise SpecBlockError(
            f"drafter {path} was trained for a target vocabulary of {c.target_vocab_size} tokens, "
            f"but this target has {target_cfg.vocab_size}"
        )
    wanted = config.get("target_fingerprint")
    if isinstance(wanted, list) and embed.numel() and not same_target(wanted, embed):
        raise SpecBlockError(
            f"drafter {path} was trained for another target: the fingerprint it holds (the target's embeddings at "
            f"{FINGERPRINT_VALUES} places) does not match this target's (same shapes, other weights); use the drafter "
            "trained for this model"
        )
    try:
        weights = load_file(str(path / "model.safetensors"))
    except Exception as exc:  # missing, truncated or corrupt file
        raise SpecBlockError(f"cannot read {path}/model.safetensors: {exc}") from None
    load_weights(model, weights, str(path))
    model.embed_tokens = embed.detach()  # the target's own table: its dtype and device, no copy
    model.eval()
    return model


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    expected = {k: v for k, v in model.state_dict().items() if k != "embed_tokens"}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise SpecBlockError(f"{where}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    for name, t in weights.items():
        if t.shape != expected[name].shape:
            raise SpecBlockError(f"{where}: {name} has shape {tuple(t.shape)}, the config implies {tuple(expected[name].shape)}")
    converted = {k: (v.float() if v.is_floating_point() else v.to(expected[k].dtype)) for k, v in weights.items()}
    model.load_state_dict(converted, strict=False)
    d2t, t2d = model.d2t, model.t2d
    mapped = d2t + torch.arange(d2t.numel())
    in_range = bool(((mapped >= 0) & (mapped < t2d.numel())).all())
    if (  # every draft id maps to a distinct target id that t2d marks, and nothing else is marked
        not in_range
        or int(t2d.sum()) != d2t.numel()
        or mapped.unique().numel() != d2t.numel()
        or not bool(t2d[mapped.clamp(0, t2d.numel() - 1)].all())
    ):
        raise SpecBlockError(f"{where}: d2t and t2d disagree (corrupt or mismatched vocabulary maps)")
