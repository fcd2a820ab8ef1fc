"""Turn a `--target` value (registry name or model directory) into a local model directory."""

from __future__ import annotations

from pathlib import Path

from specblock.errors import UnknownModelError
from specblock.models.fetch import Reporter, fetch, is_fetched, model_dir
from specblock.models.registry import MODELS


def resolve_model(name_or_path: str | Path, *, auto_fetch: bool = True, report: Reporter | None = None) -> Path:
    """Registry names resolve to the cache (fetched on first use); anything else must be a directory."""
    key = str(name_or_path)
    if key in MODELS:
        if is_fetched(key):
            return model_dir(key)
        if not auto_fetch:
            raise UnknownModelError(f"{key} is not fetched yet: run `specblock models fetch {key}`")
        return fetch(key, report=report)
    path = Path(key).expanduser()
    if path.is_dir():
        return path
    raise UnknownModelError(
        f"unknown model {key!r}: not one of {', '.join(MODELS)} and not a model directory"
    )
