"""The cluster key: the format `corral operator keygen` makes, and a single
server's own key file (made once, 0600 in a 0700 folder, refused when damaged)."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from corral import clusterkey


def test_generated_keys_validate_and_differ() -> None:
    a, b = clusterkey.generate(), clusterkey.generate()
    assert a != b
    assert clusterkey.validate(a) == a
    assert len(base64.b64decode(a)) == clusterkey.KEY_BYTES


@pytest.mark.parametrize(
    "bad",
    ["", "a", "k3y", "not base64!", base64.b64encode(b"x" * 16).decode(), "A" * 44 + "=="],
)
def test_anything_else_is_refused(bad: str) -> None:
    with pytest.raises(clusterkey.ClusterKeyError):
        clusterkey.validate(bad)


def test_surrounding_whitespace_is_ignored() -> None:
    key = clusterkey.generate()
    assert clusterkey.validate(f"  {key}\n") == key


def test_load_or_create_makes_one_key_and_keeps_it(tmp_path: Path) -> None:
    folder = tmp_path / "server" / "raft"
    key = clusterkey.load_or_create(str(folder))
    path = folder / clusterkey.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert clusterkey.load_or_create(str(folder)) == key
    assert [p.name for p in folder.iterdir()] == [clusterkey.KEY_FILE]  # no temp left


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    key = clusterkey.load_or_create(str(tmp_path))
    path = tmp_path / clusterkey.KEY_FILE
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    assert clusterkey.load_or_create(str(tmp_path)) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700


@pytest.mark.parametrize("damage", ["", "garbage\n", "\xff\xfe"])
def test_a_damaged_key_file_is_refused_not_replaced(tmp_path: Path, damage: str) -> None:
    path = tmp_path / clusterkey.KEY_FILE
    path.write_bytes(damage.encode("latin-1"))
    with pytest.raises(clusterkey.ClusterKeyError) as err:
        clusterkey.load_or_create(str(tmp_path))
    assert str(path) in str(err.value)
    assert path.read_bytes() == damage.encode("latin-1")
