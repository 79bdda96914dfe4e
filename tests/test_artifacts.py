from __future__ import annotations

import json
from pathlib import Path

import pytest

from tte_recsys.artifacts import ManifestError, atomic_path, read_manifest, write_manifest, write_text


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    write_text(p, "old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["a.txt"]


def _folder(tmp_path: Path) -> Path:
    write_text(tmp_path / "a.txt", "hello")
    write_text(tmp_path / "sub" / "b.txt", "world")
    write_text(tmp_path / "run.log", "growing")
    write_manifest(tmp_path, "demo", {"n": 2})
    return tmp_path


def test_manifest_round_trip_lists_files_not_logs(tmp_path: Path) -> None:
    m = read_manifest(_folder(tmp_path), kind="demo")
    assert sorted(m["files"]) == ["a.txt", "sub/b.txt"]
    assert m["n"] == 2


def test_manifest_detects_changed_byte(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    (d / "a.txt").write_text("hellO")
    with pytest.raises(
        ManifestError, match=r"file 'a.txt' has sha256 .* \(file changed after it was written\)"
    ):
        read_manifest(d)


def test_manifest_detects_missing_file_wrong_kind_and_absence(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    with pytest.raises(ManifestError, match=r"written by 'demo', expected output of 'evaluate'"):
        read_manifest(d, kind="evaluate")
    (d / "sub" / "b.txt").unlink()
    with pytest.raises(ManifestError, match=r"file 'sub/b.txt' listed in the manifest is missing"):
        read_manifest(d)
    with pytest.raises(ManifestError, match=r"no manifest.json"):
        read_manifest(tmp_path / "sub")


def test_manifest_schema_version_checked(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["schema_version"] = 99
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="schema_version 99, expected 1"):
        read_manifest(d)
