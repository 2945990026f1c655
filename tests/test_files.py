"""Atomic writes: the whole new file or the old one, plain-file permissions, no debris."""

import os
import stat

import pytest

from rome_jax import files


def test_write_json_replaces_the_file_whole_with_plain_permissions(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    old_mask = os.umask(0o022)
    try:
        files.write_json(path, {"accuracy": 0.5})
    finally:
        os.umask(old_mask)
    assert path.read_text() == '{\n  "accuracy": 0.5\n}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text("old")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        files.write_json(path, {"accuracy": 0.5})
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
