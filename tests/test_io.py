"""mudsc._io: atomic writes leave the complete new file or the old state, never a partial file or a temporary."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mudsc import _io


def _leftovers(folder):
    return [f for f in os.listdir(folder) if f.startswith(".mudsc-")]


def test_atomic_path_renames_onto_the_target(tmp_path):
    target = tmp_path / "a.npy"
    with _io.atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and not target.exists()
        with open(tmp, "wb") as f:
            np.save(f, np.arange(3))
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert not _leftovers(tmp_path)


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "a.json"
    _io.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError, match="writer failed"):
        with _io.atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write('{"v": 2')  # half written
            raise RuntimeError("writer failed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert not _leftovers(tmp_path)


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "no-such-folder" / "x.json"
    with pytest.raises(FileNotFoundError, match="x.json.*folder does not exist"):
        _io.write_json(missing, {})
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="it is a directory"):
        _io.write_text(tmp_path / "d", "x")


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        _io.write_bytes(tmp_path / "b.bin", b"123")
    finally:
        os.umask(old)
    assert (tmp_path / "b.bin").read_bytes() == b"123"
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o640


def test_write_json_passes_dumps_options(tmp_path):
    _io.write_json(tmp_path / "j.json", {"a": [1, 2]}, indent=1)
    assert (tmp_path / "j.json").read_text() == json.dumps({"a": [1, 2]}, indent=1)
