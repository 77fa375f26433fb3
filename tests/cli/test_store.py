"""The local store commands of the ``dtwz`` command line (``dtwz.cli.store``), driven
through click's runner against real stores in tmp_path, plus the installed console
script in a subprocess."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dtwz.cli import cli
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.store.store import Store
from tests.helpers import console_script

MISSING_ID = "00" * 16


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    result = dtwz(path, "init")
    assert result.exit_code == 0, result.output
    return path


def dtwz(store: Path, *args: str, input: bytes | str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--store", str(store), *args], input=input)


def ok(store: Path, *args: str, input: bytes | str | None = None) -> Result:
    result = dtwz(store, *args, input=input)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def ok_json(store: Path, *args: str, input: bytes | str | None = None) -> Any:
    return json.loads(ok(store, *args, "--json", input=input).stdout)


def fails(store: Path, code: int, *args: str, input: bytes | str | None = None) -> str:
    """Run a command that must fail with ``code``; its one-line error message."""
    result = dtwz(store, *args, input=input)
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit)  # handled, not an escaped exception
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


def new_object(store: Path, *args: str) -> str:
    return str(ok_json(store, "create", *args)["object_id"])


# -- store life cycle -----------------------------------------------------------------


def test_init_creates_a_store_and_refuses_a_second_time(tmp_path: Path) -> None:
    path = tmp_path / "s"
    doc = json.loads(ok(path, "init", "--json").stdout)
    assert doc["store"] == str(path) and len(doc["store_id"]) == 32
    assert (path / "STORE").is_file()
    message = fails(path, 1, "init")
    assert "already holds a dtwz store" in message


def test_missing_store_is_a_clear_runtime_error(tmp_path: Path) -> None:
    message = fails(tmp_path / "nowhere", 1, "ls")
    assert "not a dtwz store" in message and "dtwz init" in message


def test_store_comes_from_the_environment(store: Path) -> None:
    result = CliRunner(env={"DTWZ_STORE": str(store)}).invoke(cli, ["create", "--json"])
    assert result.exit_code == 0, result.output
    oid = json.loads(result.stdout)["object_id"]
    with Store.open(store) as opened:
        assert opened.exists(ObjectId.parse(oid))


# -- create, put, get -----------------------------------------------------------------


def test_create_with_data_then_get_round_trips(store: Path) -> None:
    result = ok(store, "create", "--size", "64K", "--data", "hello")
    oid, where = result.stdout.splitlines()
    ObjectId.parse(oid)
    assert where == "data at 0x1000, 5 bytes"
    assert ok(store, "get", oid).stdout_bytes == b"hello"


def test_put_appends_and_get_reads_back_binary_bytes(store: Path, tmp_path: Path) -> None:
    oid = new_object(store)
    blob = bytes(range(256)) * 3
    src = tmp_path / "blob.bin"
    src.write_bytes(blob)
    first = ok_json(store, "put", oid, "--file", str(src))
    assert first == {"object_id": oid, "offset": DATA_START, "length": len(blob), "version": 2}
    second = ok_json(store, "put", oid, input=b"\xff\x00tail")  # from stdin
    assert second["offset"] == DATA_START + len(blob)  # already 8-aligned
    assert second["version"] == 3
    data = ok(store, "get", oid).stdout_bytes
    assert data == blob + b"\xff\x00tail"
    part = ok(store, "get", oid, "--offset", hex(second["offset"]), "--length", "2")
    assert part.stdout_bytes == b"\xff\x00"


def test_put_at_a_hex_offset_and_get_a_range(store: Path) -> None:
    oid = new_object(store, "--size", "16K")
    doc = ok_json(store, "put", oid, "--offset", "0x1100", "xyz")
    assert (doc["offset"], doc["length"]) == (0x1100, 3)
    assert ok(store, "get", oid, "--offset", "0x1100").stdout_bytes == b"xyz"
    whole = ok(store, "get", oid).stdout_bytes
    assert len(whole) == 0x103 and whole.endswith(b"xyz") and not any(whole[:0x100])


def test_put_align_option(store: Path) -> None:
    oid = new_object(store)
    ok(store, "put", oid, "abc", "--align", "1")
    assert ok_json(store, "put", oid, "def", "--align", "1")["offset"] == DATA_START + 3
    assert ok_json(store, "put", oid, "g", "--align", "16")["offset"] == DATA_START + 16
    assert "power of two" in fails(store, 2, "put", oid, "h", "--align", "3")


def test_get_json_carries_base64_or_hex(store: Path) -> None:
    oid = new_object(store, "--data", "bytes\x01")
    b64 = ok_json(store, "get", oid)
    assert b64["encoding"] == "base64" and base64.b64decode(b64["data"]) == b"bytes\x01"
    hexed = ok_json(store, "get", oid, "--encoding", "hex")
    assert bytes.fromhex(hexed["data"]) == b"bytes\x01"
    assert (hexed["offset"], hexed["length"]) == (DATA_START, 6)
    # the global flag does the same as the per-command one
    glob = json.loads(ok(store, "--json", "get", oid).stdout)
    assert base64.b64decode(glob["data"]) == b"bytes\x01"


def test_get_out_writes_a_file(store: Path, tmp_path: Path) -> None:
    oid = new_object(store, "--data", "to a file")
    out = tmp_path / "out.bin"
    doc = ok_json(store, "get", oid, "--out", str(out))
    assert out.read_bytes() == b"to a file"
    assert doc["out"] == str(out) and doc["length"] == 9


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("8K", 8192), ("64KiB", 65536), ("1M", 1 << 20), ("0x2000", 0x2000)],
)
def test_create_size_forms(store: Path, text: str, size: int) -> None:
    doc = ok_json(store, "create", "--size", text)
    assert doc["size"] == size
    assert ok_json(store, "show", doc["object_id"])["size"] == size


@pytest.mark.parametrize("text", ["5000", "2K", "2G", "0", "abc", "1T", "-4096"])
def test_create_rejects_bad_sizes(store: Path, text: str) -> None:
    assert "--size" in fails(store, 2, "create", "--size", text)


def test_create_flags_and_protections_show_up(store: Path) -> None:
    doc = ok_json(store, "create", "--immutable", "--volatile", "--prot", "rx", "--data", "x")
    shown = ok_json(store, "show", doc["object_id"])
    assert shown["flags"] == ["IMMUTABLE", "VOLATILE"]
    assert shown["prot"] == "rx"


@pytest.mark.parametrize("prot", ["rwq", "rr", ""])
def test_create_rejects_bad_protections(store: Path, prot: str) -> None:
    assert "--prot" in fails(store, 2, "create", "--prot", prot)


def test_immutable_object_refuses_later_writes(store: Path) -> None:
    oid = new_object(store, "--immutable", "--data", "frozen")
    assert "immutable" in fails(store, 1, "put", oid, "more")
    assert ok(store, "get", oid).stdout_bytes == b"frozen"


def test_full_object_is_a_runtime_error_and_loses_nothing(store: Path) -> None:
    oid = new_object(store, "--size", "8K", "--data", "kept")
    assert "free" in fails(store, 1, "put", oid, "x" * 5000)
    assert ok(store, "get", oid).stdout_bytes == b"kept"


# -- show and ls ----------------------------------------------------------------------


def test_show_json_fields(store: Path) -> None:
    oid = new_object(store, "--size", "64K", "--data", "0123456789")
    doc = ok_json(store, "show", oid)
    assert doc["object_id"] == oid
    assert doc["size"] == 65536
    assert doc["flags"] == [] and doc["prot"] == "rw"
    assert doc["data_len"] == 10 and doc["data_end"] == DATA_START + 10
    assert doc["version"] == 1
    assert doc["fot_count"] == 0 and doc["fot"] == []
    assert doc["free_bytes"] == 65536 - DATA_START - 10
    text = ok(store, "show", oid).stdout
    assert f"object     {oid}" in text and "64 KiB" in text


def test_ls_lists_every_created_object(store: Path) -> None:
    oids = {new_object(store, "--size", "16K"), new_object(store), new_object(store, "--data", "x")}
    doc = ok_json(store, "ls")
    assert {row["object_id"] for row in doc["objects"]} == oids
    by_id = {row["object_id"]: row for row in doc["objects"]}
    assert all(row["version"] == 1 for row in by_id.values())
    text = ok(store, "ls").stdout
    assert all(oid in text for oid in oids)


def test_ls_of_an_empty_store(store: Path) -> None:
    assert ok_json(store, "ls")["objects"] == []


def _corrupt_header(store: Path, oid: str) -> None:
    path = store / "objects" / oid[:2] / oid
    with open(path, "r+b") as f:
        f.seek(20)
        byte = f.read(1)
        f.seek(20)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_corrupt_object_is_reported_not_crashed_on(store: Path) -> None:
    good = new_object(store, "--data", "fine")
    bad = new_object(store, "--data", "doomed")
    ok(store, "checkpoint")  # so that no log replay repairs the header we break
    _corrupt_header(store, bad)
    assert "checksum" in fails(store, 1, "show", bad)
    assert "checksum" in fails(store, 1, "get", bad)
    # ls still lists the good object, names the bad one, and exits 1
    result = dtwz(store, "ls", "--json")
    assert result.exit_code == 1
    rows = {row["object_id"]: row for row in json.loads(result.stdout)["objects"]}
    assert rows[good]["data_len"] == 4
    assert "checksum" in rows[bad]["error"]
    assert f"error: object {bad}" in result.stderr


def test_ls_skips_stray_files_in_the_objects_folder(store: Path) -> None:
    oid = new_object(store)
    (store / "objects" / "ab" / ("z" * 32)).write_bytes(b"not an object")
    assert [row["object_id"] for row in ok_json(store, "ls")["objects"]] == [oid]


# -- link and deref -------------------------------------------------------------------


def test_link_then_deref_leads_to_the_target(store: Path) -> None:
    src = new_object(store, "--size", "64K", "--data", "source")
    dst = new_object(store, "--size", "64K", "--data", "target bytes")
    doc = ok_json(store, "link", src, dst, "--at", "0x1100", "--target-offset", "0x1007")
    assert doc["pointer"] == "1:0x1007" and doc["fot_index"] == 1 and doc["new_fot_entry"]
    assert doc["word"] == 1 << 48 | 0x1007
    hop = ok_json(store, "deref", src, "--at", "0x1100")
    assert (hop["target"], hop["offset"], hop["pointer"]) == (dst, 0x1007, "1:0x1007")
    assert ok(store, "deref", src, "--at", "0x1100").stdout.startswith(f"{dst}:0x1007")
    # the library agrees: the stored word, followed, lands on the target's bytes
    with Store.open(store) as opened:
        obj = opened.get(ObjectId.parse(src))
        target, offset = obj.follow(obj.read_u64(0x1100))
        assert target.object_id.hex() == dst
        assert bytes(target.read(offset, 5)) == b"bytes"
    shown = ok_json(store, "show", src)
    assert shown["fot_count"] == 1
    assert shown["fot"] == [
        {"index": 1, "kind": "ID", "target": dst, "flags": ["VALID", "READ", "WRITE"]}
    ]


def test_link_reuses_an_fot_entry_and_adds_one_for_other_rights(store: Path) -> None:
    src = new_object(store)
    dst = new_object(store)
    first = ok_json(store, "link", src, dst)
    again = ok_json(store, "link", src, dst, "--target-offset", "0x2000")
    assert again["fot_index"] == first["fot_index"] == 1 and not again["new_fot_entry"]
    assert again["at"] == first["at"] + 8  # default: a fresh 8-byte slot
    readonly = ok_json(store, "link", src, dst, "--rights", "r")
    assert readonly["fot_index"] == 2 and readonly["new_fot_entry"]
    fot = ok_json(store, "show", src)["fot"]
    assert [row["flags"] for row in fot] == [["VALID", "READ", "WRITE"], ["VALID", "READ"]]
    assert ok_json(store, "deref", src, "--at", str(readonly["at"]))["target"] == dst


def test_link_inside_one_object_uses_index_zero(store: Path) -> None:
    oid = new_object(store, "--data", "self")
    doc = ok_json(store, "link", oid, oid, "--target-offset", "0x1002")
    assert doc["pointer"] == "0:0x1002" and doc["fot_index"] == 0
    hop = ok_json(store, "deref", oid, "--at", hex(doc["at"]))
    assert (hop["target"], hop["offset"]) == (oid, 0x1002)
    assert ok_json(store, "show", oid)["fot_count"] == 0


def test_link_errors(store: Path) -> None:
    src = new_object(store)
    dst = new_object(store, "--size", "8K")
    assert "no object" in fails(store, 1, "link", src, MISSING_ID)
    assert "--target-offset" in fails(store, 2, "link", src, dst, "--target-offset", "0x2000")
    assert "--target-offset" in fails(store, 2, "link", src, dst, "--target-offset", "0x10")
    assert "--at" in fails(store, 2, "link", src, dst, "--at", "0x100000")
    assert ok_json(store, "show", src)["fot_count"] == 0  # nothing half-done


def test_deref_errors(store: Path) -> None:
    oid = new_object(store, "--size", "16K")
    beyond = (0x8000).to_bytes(8, "little")  # index 0, offset past this 16K object
    ok(store, "put", oid, "--file", "-", input=beyond)
    assert "outside" in fails(store, 1, "deref", oid, "--at", "0x1000")
    assert "NULL" in fails(store, 1, "deref", oid, "--at", "0x1100")
    assert "--at" in fails(store, 2, "deref", oid, "--at", "0x3ffc")  # 8 bytes do not fit
    assert "--at" in fails(store, 2, "deref", oid, "--at", "8")  # header page
    assert "--at" in fails(store, 2, "deref", oid)  # missing


def test_deref_through_a_missing_fot_entry(store: Path) -> None:
    oid = new_object(store)
    word = (5 << 48 | 0x1000).to_bytes(8, "little")
    ok(store, "put", oid, "--file", "-", input=word)
    message = fails(store, 1, "deref", oid, "--at", "0x1000")
    assert "FOT index 5" in message and f"in {oid}" in message


def test_deref_a_linked_object_that_was_deleted(store: Path) -> None:
    src = new_object(store)
    dst = new_object(store)
    at = ok_json(store, "link", src, dst)["at"]
    with Store.open(store) as opened, opened.transaction() as tx:
        tx.delete(ObjectId.parse(dst))
    assert "no object" in fails(store, 1, "deref", src, "--at", str(at))


# -- checkpoint -----------------------------------------------------------------------


def test_checkpoint_replays_the_log_and_empties_it(store: Path) -> None:
    oid = new_object(store, "--data", "logged")
    assert (store / "wal.log").stat().st_size > 0
    doc = ok_json(store, "checkpoint")
    assert doc["replayed_records"] >= 1
    assert (store / "wal.log").stat().st_size == 0
    assert ok(store, "get", oid).stdout_bytes == b"logged"
    assert "checkpoint done" in ok(store, "checkpoint").stdout


# -- bad input everywhere ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["get", "1234"], 2, "32 hex digits"),
        (["get", "zz" * 16], 2, "32 hex digits"),
        (["show"], 2, "Missing argument"),
        (["get", MISSING_ID], 1, "no object"),
        (["show", MISSING_ID], 1, "no object"),
        (["put", MISSING_ID, "x"], 1, "no object"),
        (["deref", MISSING_ID, "--at", "0x1000"], 1, "no object"),
        (["bogus"], 2, "No such command"),
        (["--bogus", "ls"], 2, "No such option"),
        ([], 2, "Missing command"),
    ],
)
def test_bad_input_gives_one_error_line(
    store: Path, args: list[str], code: int, needle: str
) -> None:
    assert needle in fails(store, code, *args)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["get", "{oid}", "--offset", "0xzz"], "decimal or 0x-hex"),
        (["get", "{oid}", "--offset", "-5"], "negative"),
        (["get", "{oid}", "--offset", "0x10"], "--offset"),
        (["get", "{oid}", "--offset", "0x9000"], "--offset"),
        (["get", "{oid}", "--length", "0x9000"], "--length"),
        (["put", "{oid}", "--offset", "0x7fff", "xy"], "--offset"),
        (["put", "{oid}", "--offset", "0", "xy"], "--offset"),
        (["put", "{oid}", "x", "--file", "-"], "not both"),
        (["put", "{oid}", "--file", "/does/not/exist"], "--file"),
        (["put", "{oid}"], "empty"),
        (["put", "{oid}", ""], "empty"),
    ],
)
def test_bad_offsets_and_data_are_usage_errors(store: Path, args: list[str], needle: str) -> None:
    oid = new_object(store, "--size", "32K", "--data", "abc")
    message = fails(store, 2, *(arg.format(oid=oid) for arg in args), input=b"")
    assert needle in message
    assert ok(store, "get", oid).stdout_bytes == b"abc"


def test_help_everywhere(store: Path) -> None:
    top = ok(store, "--help").stdout
    commands = ["init", "create", "put", "get", "show", "ls", "link", "deref", "checkpoint"]
    for name in commands:
        line = next(line for line in top.splitlines() if line.strip().startswith(name + " "))
        assert not line.rstrip().endswith("..."), line  # one whole line, not cut off
        assert "Usage: dtwz " + name in ok(store, name, "--help").stdout
    assert "DTWZ_STORE" in top


def test_bare_dtwz_shows_help_and_fails() -> None:
    result = CliRunner().invoke(cli, [])
    assert result.exit_code == 2
    assert "Commands:" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: no command given"


def test_version(store: Path) -> None:
    assert "dtwz, version" in ok(store, "--version").stdout


# -- the installed console script ------------------------------------------------------


def test_console_script_end_to_end(tmp_path: Path) -> None:
    exe = console_script()
    env = {**os.environ, "DTWZ_STORE": str(tmp_path / "store")}

    def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [exe, *args], input=stdin, capture_output=True, env=env, timeout=60, check=False
        )

    assert run("init").returncode == 0
    created = run("create", "--size", "64K", "--file", "-", stdin=b"piped\x00in")
    assert created.returncode == 0, created.stderr
    oid = created.stdout.decode().splitlines()[0]
    got = run("get", oid)
    assert (got.returncode, got.stdout) == (0, b"piped\x00in")
    bad = run("get", "not-an-id")
    assert bad.returncode == 2
    assert bad.stderr.decode().strip().splitlines()[-1].startswith("error: ")
    assert b"Traceback" not in bad.stderr
    missing = run("show", MISSING_ID)
    assert missing.returncode == 1 and b"no object" in missing.stderr
    assert b"Traceback" not in missing.stderr
