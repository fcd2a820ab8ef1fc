"""The trained drafters that ship with the package (fp16, see each one's README.md)."""

from __future__ import annotations

from pathlib import Path

SHIPPED_ROOT = Path(__file__).resolve().parent.parent / "shipped"


def shipped_drafter(target_name: str, method: str) -> Path | None:
    """The shipped checkpoint directory for a registry target and method, if there is one."""
    path = SHIPPED_ROOT / f"{target_name}-{method}"
    return path if (path / "config.json").is_file() else None
