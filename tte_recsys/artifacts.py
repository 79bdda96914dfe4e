"""Atomic writes and output-folder manifests (sha256 of every file, verified on load)."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import polars as pl

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "ManifestError",
    "atomic_dir",
    "atomic_path",
    "read_manifest",
    "sha256_file",
    "write_json",
    "write_manifest",
    "write_parquet",
    "write_text",
]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


_FAULT_ENV = "TTE_RECSYS_KILL_AT"
_fault_hits: dict[str, int] = {}


def _fault_point(stage: str, path: Path) -> None:
    """Fault injection for the fault tests (``tests/test_faults.py``): with
    ``TTE_RECSYS_KILL_AT=<stage>:<glob>[:<n>]`` the process SIGKILLs itself the n-th time (default
    1) it reaches ``stage`` for a path matching ``glob``. Stages: ``write`` (the temporary file or
    folder is complete, not yet renamed into place) and ``renamed`` (just after). Unset: nothing."""
    spec = os.environ.get(_FAULT_ENV)
    if not spec:
        return
    want, pattern, *nth = spec.split(":")
    if want != stage or not fnmatch.fnmatch(str(path), pattern):
        return
    _fault_hits[spec] = _fault_hits.get(spec, 0) + 1
    if _fault_hits[spec] == int(nth[0] if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)


class ManifestError(ValueError):
    """An output folder does not match its manifest (missing, changed or unlisted file)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    Readers never see a half-written file, and a failure leaves any previous file untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
        except OSError as e:  # a full disk or a size limit: name the file being written
            if e.filename is None and e.errno is not None:
                raise OSError(e.errno, e.strerror, str(final)) from e
            raise
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared
        _fault_point("write", final)
        os.replace(tmp, final)
        _fault_point("renamed", final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it replaces ``path`` only if the block succeeds.

    A reader never sees a half-written folder, and a failure leaves the previous one untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        _fault_point("write", final)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        _fault_point("renamed", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: str | os.PathLike[str], df: pl.DataFrame) -> None:
    """Write a polars frame as parquet, atomically."""
    with atomic_path(path) as tmp:
        try:
            df.write_parquet(tmp)
        except pl.exceptions.PolarsError as e:  # a full disk or a size limit surfaces here, not as OSError
            raise OSError(f"cannot write {path}: {e}") from e


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(
    out_dir: str | os.PathLike[str], kind: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``manifest.json`` listing every file under ``out_dir`` with its size and sha256.

    Hidden folders (Hydra's ``.hydra``), logs (still growing after the manifest is written) and
    the manifest itself are not listed.

    Args:
        out_dir: the output folder.
        kind: what produced it (pipeline name), checked by readers.
        extra: more JSON-serialisable fields (config, shapes, ...).
    """
    root = Path(out_dir)
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if (
            not p.is_file()
            or rel.as_posix() == MANIFEST_NAME
            or p.suffix == ".log"
            or any(part.startswith(".") for part in rel.parts)
        ):
            continue
        files[rel.as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {"schema_version": SCHEMA_VERSION, "kind": kind, "files": files, **(extra or {})}
    write_json(root / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(out_dir: str | os.PathLike[str], kind: str | None = None) -> dict[str, Any]:
    """Read and verify ``manifest.json``: every listed file exists with the recorded sha256.

    Raises:
        ManifestError: naming the folder and the first file that does not match.
    """
    root = Path(out_dir)
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        raise ManifestError(f"{root}: no {MANIFEST_NAME}; expected an output folder written by tte_recsys")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{mpath}: not valid JSON ({e})") from e
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(
            f"{mpath}: schema_version {manifest.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    if kind is not None and manifest.get("kind") != kind:
        raise ManifestError(f"{mpath}: written by {manifest.get('kind')!r}, expected output of {kind!r}")
    for rel, meta in manifest.get("files", {}).items():
        p = root / rel
        if not p.is_file():
            raise ManifestError(f"{root}: file {rel!r} listed in the manifest is missing")
        digest = sha256_file(p)
        if digest != meta["sha256"]:
            raise ManifestError(
                f"{root}: file {rel!r} has sha256 {digest[:12]}..., manifest says {meta['sha256'][:12]}... "
                "(file changed after it was written)"
            )
    return dict(manifest)
