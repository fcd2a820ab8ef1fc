"""The drafting methods by name: the drafter each one builds and the node budget it drafts with.

`SpecGenerator` (api.py) and the benchmark name methods the same way, so the list lives here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from specblock.budget import auto_budget, drafter_key, load_draft_latency, load_or_measure
from specblock.drafters.base import Drafter
from specblock.drafters.checkpoint import load_drafter, read_config
from specblock.drafters.draft_model import DraftModelDrafter
from specblock.drafters.eagle3 import Eagle3Drafter
from specblock.drafters.lookup import LookupDrafter
from specblock.drafters.shipped import shipped_drafter
from specblock.drafters.specblock import SpecBlockDrafter
from specblock.drafters.vanilla import VanillaDrafter
from specblock.errors import InvalidSettingError, UnknownModelError
from specblock.models.fetch import Reporter
from specblock.models.registry import DRAFT_MODEL_FOR
from specblock.models.resolve import resolve_model
from specblock.target.runner import TargetRunner
from specblock.target.transformer import Transformer
from specblock.text import ChatTokenizer

METHODS = ("vanilla", "lookup", "draft-model", "specblock", "eagle3")
NEURAL_METHODS = ("specblock", "eagle3")
# Default draft-node budgets per method. Verification cost grows quickly with tree size on a
# CPU, so the defaults are small; the trained drafters pick theirs from the measured
# verify-latency profile (`auto`, see specblock.budget).
DEFAULT_BUDGET: dict[str, int | str] = {"vanilla": 0, "lookup": 10, "draft-model": 8, "specblock": "auto", "eagle3": "auto"}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise InvalidSettingError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


def build_drafter(
    method: str,
    target: Transformer,
    tokenizer: ChatTokenizer,
    target_name: str | Path,
    draft_model: str | Path | None,
    dtype: torch.dtype,
    device: str,
    report: Reporter | None,
    drafter_dir: str | Path | None = None,
) -> Drafter:
    if drafter_dir is not None and method not in NEURAL_METHODS:
        raise InvalidSettingError(f"--drafter applies to {' and '.join(NEURAL_METHODS)}, not to {method}")
    if method in NEURAL_METHODS:
        return load_trained_drafter(method, target, target_name, drafter_dir)
    if method == "vanilla":
        return VanillaDrafter()
    if method == "lookup":
        return LookupDrafter()
    # draft-model: a smaller LM that shares the target's tokenizer
    name = draft_model or DRAFT_MODEL_FOR.get(str(target_name))
    if name is None:
        raise UnknownModelError(
            f"no same-tokenizer draft model is known for {target_name}; pass one with --draft-model"
        )
    draft_dir = resolve_model(name, report=report)
    small = Transformer.load(draft_dir, dtype, device)
    if small.cfg.vocab_size != target.cfg.vocab_size or not tokenizer.same_vocabulary(ChatTokenizer.load(draft_dir)):
        raise InvalidSettingError(f"draft model {name} does not share the target's tokenizer")
    return DraftModelDrafter(small)


def load_trained_drafter(method: str, target: Transformer, target_name: str | Path, drafter_dir: str | Path | None) -> Drafter:
    """A SpecBlock or EAGLE-3 drafter: the given checkpoint, else the one shipped for the target."""
    if drafter_dir is None:
        drafter_dir = shipped_drafter(str(target_name), method)
        if drafter_dir is None:
            raise UnknownModelError(
                f"no trained {method} drafter ships for target {target_name!r}; train one with `specblock train` "
                "and pass it with --drafter"
            )
    path = Path(drafter_dir)
    if not path.is_dir():
        raise InvalidSettingError(f"drafter directory {path} does not exist")
    model = load_drafter(path, target.cfg, target.embed, method=method).to(target.device)
    config = read_config(path)
    if method == "specblock":  # a checkpoint may carry drafting-time ablation switches (design §9)
        drafting = config.get("drafting", {})
        drafter = SpecBlockDrafter(model, fixed_topk=drafting.get("fixed_topk"), blocks=drafting.get("blocks", 2))
    else:
        drafter = Eagle3Drafter(model)
    drafter.calibration = config.get("calibration")
    drafter.source_dir = path
    return drafter


def resolve_budget(budget: int | str, target: Transformer, target_name: str | Path, drafter: Drafter) -> int:
    """A node budget from a number or "auto" (the measured best for this machine)."""
    if isinstance(budget, str):
        if budget.strip().lower() == "auto":
            if isinstance(drafter, VanillaDrafter):
                return 0
            profile, calibration, measured = budget_inputs(target, target_name, drafter)
            return auto_budget(profile, calibration, draft_s=measured)
        try:
            budget = int(budget)
        except ValueError:
            raise InvalidSettingError(f"node budget must be a number of nodes or 'auto', got {budget!r}") from None
    if budget < 0:
        raise InvalidSettingError(f"node budget must be >= 0, got {budget}")
    return budget


def budget_inputs(target: Transformer, target_name: str | Path, drafter: Drafter):
    """What `auto` decides from: this machine's T(n), the drafter's calibration, its measured D(n)."""
    runner, name = TargetRunner(target), str(target_name) or "target"
    profile = load_or_measure(runner, name)
    source = getattr(drafter, "source_dir", None)
    measured = load_draft_latency(runner, name, drafter_key(drafter.name, source)) if source else None
    return profile, getattr(drafter, "calibration", None), measured
