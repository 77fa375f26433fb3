"""A store is readable by its node's user only: the folder and its subfolders 0700,
object files, the redo log and the control files 0600, whatever the umask; a store
made before that is tightened when it is opened. A node's own store:
tests/node/test_authentication.py."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtwz.store.store import Store


@pytest.fixture
def open_umask() -> Iterator[None]:
    before = os.umask(0o000)  # the most permissive: modes must not depend on it
    try:
        yield
    finally:
        os.umask(before)


def modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for where, folders, files in os.walk(root):
        for name in [*folders, *files]:
            path = Path(where, name)
            found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


@pytest.mark.usefixtures("open_umask")
def test_a_new_store_is_its_users_alone(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with Store.open(root, create=True) as store:
        with store.transaction() as tx:
            oid = tx.create(8192)
            tx.append(oid, b"private")
        with store.transaction() as tx:
            tx.append(oid, b" still")
    found = modes(root)
    assert f"objects/{oid.hex()[:2]}/{oid.hex()}" in found
    for name in ("STORE", "store.ctl", "wal.log"):
        assert found[name] == 0o600, name
    wrong = {
        name: oct(mode)
        for name, mode in found.items()
        if mode != (0o700 if (root / name).is_dir() else 0o600)
    }
    assert not wrong


@pytest.mark.usefixtures("open_umask")
def test_an_older_store_is_tightened_at_open(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store.open(root, create=True).close()
    os.chmod(root, 0o755)
    for name in ("store.ctl", "wal.log"):
        os.chmod(root / name, 0o644)
    with Store.open(root):
        pass
    found = modes(root)
    assert found["."] == 0o700
    assert found["store.ctl"] == found["wal.log"] == 0o600


def test_a_store_in_an_existing_folder_closes_it(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    Store.open(root, create=True).close()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
