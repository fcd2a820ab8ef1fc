"""The drafters committed under src/specblock/shipped: each pair within its size limit, each
drafter fp16 with a fingerprint, a calibration for `auto` and a model card. Reads files only
(the 1.5B target is not on a CI machine), so an oversized or half-shipped drafter fails here."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from specblock.drafters.shipped import SHIPPED_ROOT, shipped_drafter
from specblock.methods import METHODS

PAIR_LIMIT_MB = {"smollm2-135m": 40.0, "qwen2.5-coder-1.5b": 160.0}  # issue 15


def shipped_dirs() -> list:
    return sorted(p for p in SHIPPED_ROOT.iterdir() if (p / "config.json").is_file())


def test_every_shipped_drafter_has_a_known_target_and_method():
    names = {p.name for p in shipped_dirs()}
    assert names, "no shipped drafters"
    for target in PAIR_LIMIT_MB:
        for method in ("specblock", "eagle3"):
            assert shipped_drafter(target, method) is not None, f"{target}-{method} not shipped"
    known = {f"{t}-{m}" for t in PAIR_LIMIT_MB for m in METHODS}
    assert names <= known, f"shipped drafters without a size limit here: {names - known}"


@pytest.mark.parametrize("target", sorted(PAIR_LIMIT_MB))
def test_pair_within_its_size_limit(target):
    sizes = [(shipped_drafter(target, m) / "model.safetensors").stat().st_size for m in ("specblock", "eagle3")]
    assert sum(sizes) / 1e6 <= PAIR_LIMIT_MB[target]


@pytest.mark.parametrize("path", shipped_dirs(), ids=lambda p: p.name)
def test_shipped_drafter_is_complete(path):
    config = json.loads((path / "config.json").read_text())
    assert config["method"] in path.name
    assert config["target_fingerprint"], "loading it could not tell another target apart"
    assert config["calibration"]["budgets"], "`--node-budget auto` needs a calibration"
    card = (path / "README.md").read_text()
    assert card.startswith(f"# {config['method']} drafter for ")
    with safe_open(str(path / "model.safetensors"), "pt") as weights:
        dtypes = {str(weights.get_slice(k).get_dtype()) for k in weights.keys()}
    assert dtypes <= {"F16", "BOOL", "I64", "I32"}, dtypes  # fp16 weights, plus the d2t / t2d maps
