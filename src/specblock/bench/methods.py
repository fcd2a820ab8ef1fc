"""Method specs (`name[:label][@budget]`) and `--drafters` lists, checked before any model loads.

A label names a variant of a trained method, so one benchmark can hold several drafters of
the same method (the ablations of design §9): `specblock:noshift@auto` runs the checkpoint
given as `--drafters specblock:noshift=DIR`.
"""

from __future__ import annotations

from dataclasses import dataclass

from specblock.errors import InvalidSettingError
from specblock.methods import METHODS, NEURAL_METHODS


@dataclass(frozen=True)
class MethodSpec:
    """`specblock@59` -> name "specblock", budget "59"; `lookup` -> budget None (the method's default);
    `specblock:noshift@8` -> name "specblock", label "noshift", budget "8"."""

    spec: str
    name: str
    budget: str | None
    label: str = ""

    @property
    def drafter_key(self) -> str:
        """The `--drafters` key of this spec's checkpoint."""
        return f"{self.name}:{self.label}" if self.label else self.name


def parse_methods(text: str | list[str]) -> list[MethodSpec]:
    """Parse `vanilla,lookup,specblock@59,eagle3@auto`; vanilla must come first (the reference)."""
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    specs = []
    for item in items:
        head, at, budget = item.partition("@")
        name, colon, label = head.partition(":")
        if name not in METHODS:
            raise InvalidSettingError(f"unknown method {name!r} in {item!r}; use one of {', '.join(METHODS)}")
        if colon and (name not in NEURAL_METHODS or not label.replace("-", "").replace("_", "").isalnum()):
            raise InvalidSettingError(
                f"{item!r}: only {' and '.join(NEURAL_METHODS)} take a variant label (letters, digits, - and _)"
            )
        if at and not (budget == "auto" or budget.isdigit()):
            raise InvalidSettingError(f"budget in {item!r} must be a number of draft nodes or 'auto'")
        specs.append(MethodSpec(item, name, budget if at else None, label))
    if not specs or specs[0].spec != "vanilla":
        raise InvalidSettingError(
            "the methods must start with plain `vanilla` (the reference for speedup and output checks), "
            "e.g. --methods vanilla,lookup"
        )
    seen = [s.spec for s in specs]
    dupes = sorted({s for s in seen if seen.count(s) > 1})
    if dupes:
        raise InvalidSettingError(f"method {dupes[0]!r} is listed twice")
    return specs


def parse_drafters(text: str | None) -> dict[str, str]:
    """`specblock=DIR,eagle3=DIR,specblock:LABEL=DIR` (trained checkpoints) and `draft-model=NAME|DIR` -> a dict."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        name, eq, path = item.partition("=")
        if not eq or not path:
            raise InvalidSettingError(f"--drafters entry {item!r} must look like METHOD=DIR or METHOD:LABEL=DIR")
        method, colon, _ = name.partition(":")
        if not (method in NEURAL_METHODS or (method == "draft-model" and not colon)):
            raise InvalidSettingError(
                f"--drafters applies to {', '.join(NEURAL_METHODS)} and draft-model, not {name!r}"
            )
        out[name] = path
    return out


def base_name(spec: str) -> str:
    """`specblock@59` -> `specblock`."""
    return spec.partition("@")[0]
