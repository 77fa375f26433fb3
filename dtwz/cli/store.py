"""The local store commands: ``init``, ``create``, ``put``, ``get``, ``show``, ``ls``,
``link``, ``deref`` and ``checkpoint``, a thin shell over one store folder
(``dtwz.store``).

Each command opens the store named by ``--store`` (or ``DTWZ_STORE``), does one
thing in at most one transaction, and prints a few readable lines or, with
``--json``, exactly one JSON document. Reads run under the object's lock, so they
never see half of another process's commit. The object format is docs/FORMAT.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import click

from dtwz.cli.common import (
    EXIT_RUNTIME,
    OFFSET,
    OID,
    PROT,
    SIZE,
    CliConfig,
    bad_parameter,
    emit_bytes,
    fail,
    flag_names,
    human_size,
    json_option,
    pass_config,
    prot_text,
    read_data,
)
from dtwz.errors import CorruptObject, DtwzError, ObjectNotFound
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, FotFlags, ObjectFlags, ObjectHeader, Protection
from dtwz.format.pointers import PersistentPointer
from dtwz.store.store import Store
from dtwz.store.transaction import DEFAULT_OBJECT_SIZE, Transaction


def _check_range(
    header: ObjectHeader, offset: int, length: int, hint: str, length_hint: str | None = None
) -> None:
    """User-given ranges must lie in the object's data space (bad input: exit 2)."""
    if offset < DATA_START or offset + length > header.max_size:
        in_range = DATA_START <= offset < header.max_size
        raise bad_parameter(
            length_hint if length_hint and in_range else hint,
            f"{length} bytes at {offset:#x} are outside {DATA_START:#x}..{header.max_size:#x}, "
            f"the data space of object {header.object_id}",
        )


@contextlib.contextmanager
def _locked(store: Store) -> Iterator[Transaction]:
    """A transaction used only to read under object locks; it never writes."""
    tx = store.transaction()
    try:
        yield tx
    finally:
        tx.abort()


def _header_doc(header: ObjectHeader) -> dict[str, Any]:
    return {
        "object_id": str(header.object_id),
        "size": header.max_size,
        "flags": flag_names(header.flags, ObjectFlags),
        "prot": prot_text(header.default_prot),
        "data_len": header.data_len,
        "data_end": header.data_end,
        "version": header.version,
        "fot_count": header.fot_count,
        "free_bytes": header.free_bytes,
    }


def _power_of_two(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value & (value - 1):
        raise click.BadParameter(f"{value} is not a power of two", ctx, param)
    return value


align_option = click.option(
    "--align",
    type=click.IntRange(1, 4096),
    metavar="N",
    default=8,
    show_default=True,
    callback=_power_of_two,
    help="Alignment of appended data (a power of two).",
)


# -- the commands --------------------------------------------------------------------


@click.command()
@json_option
@pass_config
def init(cfg: CliConfig, as_json: bool) -> None:
    """Create a new, empty store folder."""
    with Store.init(cfg.store) as store:
        store_id = store.store_id
    doc = {"store": str(cfg.store), "store_id": store_id}
    cfg.emit(as_json, doc, f"created store {cfg.store} (store id {store_id})")


@click.command()
@click.option(
    "--size",
    type=SIZE,
    default=DEFAULT_OBJECT_SIZE,
    help="Maximum size, a power of two from 4K to 1G: 4096, 64K, 1M...  [default: 1M]",
)
@click.option("--immutable", is_flag=True, help="No writes after this creating transaction.")
@click.option("--volatile", is_flag=True, help="Mark the object VOLATILE.")
@click.option("--prot", type=PROT, default="rw", show_default=True, help="Default protections.")
@click.option("--data", "text", metavar="TEXT", help="Initial data (UTF-8 text).")
@click.option("--file", type=click.File("rb"), help="Initial data from a file ('-' for stdin).")
@align_option
@json_option
@pass_config
def create(
    cfg: CliConfig,
    size: int,
    immutable: bool,
    volatile: bool,
    prot: Protection,
    text: str | None,
    file: BinaryIO | None,
    align: int,
    as_json: bool,
) -> None:
    """Create an object and print its ID.

    Initial data (--data or --file) is appended in the same transaction, so an
    --immutable object can be born with its contents.
    """
    data = read_data(text, file, stdin_default=False) or None
    flags = (ObjectFlags.IMMUTABLE if immutable else 0) | (ObjectFlags.VOLATILE if volatile else 0)
    with cfg.open_store() as store:
        with store.transaction() as tx:
            oid = tx.create(size, flags=int(flags), default_prot=int(prot))
            offset = tx.append(oid, data, align) if data else None
        header = store.header(oid)
    doc = _header_doc(header) | {"offset": offset, "length": len(data) if data else 0}
    lines = [str(oid)]
    if data:
        lines.append(f"data at {offset:#x}, {len(data)} bytes")
    cfg.emit(as_json, doc, "\n".join(lines))


@click.command()
@click.argument("oid", type=OID)
@click.argument("text", metavar="[DATA]", required=False)
@click.option("--file", type=click.File("rb"), help="Read the data from a file ('-' for stdin).")
@click.option("--offset", type=OFFSET, help="Write here instead of appending.")
@align_option
@json_option
@pass_config
def put(
    cfg: CliConfig,
    oid: ObjectId,
    text: str | None,
    file: BinaryIO | None,
    offset: int | None,
    align: int,
    as_json: bool,
) -> None:
    """Write bytes into an object (append unless --offset).

    The data is DATA (UTF-8 text), the contents of --file, or stdin. Prints
    where the bytes went.
    """
    data = read_data(text, file, stdin_default=True)
    if not data:
        raise click.UsageError("nothing to write: the data is empty")
    with cfg.open_store() as store:
        with store.transaction() as tx:
            header = tx.lock(oid)
            if offset is None:
                offset = tx.append(oid, data, align)
            else:
                _check_range(header, offset, len(data), "--offset")
                tx.write(oid, offset, data)
        version = store.header(oid).version
    doc = {"object_id": str(oid), "offset": offset, "length": len(data), "version": version}
    cfg.emit(as_json, doc, f"wrote {len(data)} bytes at {offset:#x}")


@click.command()
@click.argument("oid", type=OID)
@click.option("--offset", type=OFFSET, default=DATA_START, help="Start here.  [default: 0x1000]")
@click.option("--length", type=OFFSET, help="How many bytes  [default: up to the data end]")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file.")
@click.option(
    "--encoding",
    type=click.Choice(["base64", "hex"]),
    default="base64",
    show_default=True,
    help="How --json carries the bytes.",
)
@json_option
@pass_config
def get(
    cfg: CliConfig,
    oid: ObjectId,
    offset: int,
    length: int | None,
    out: Path | None,
    encoding: str,
    as_json: bool,
) -> None:
    """Read bytes of an object to stdout or a file.

    By default the whole data area, 0x1000 up to the end of the data. With
    --json the bytes travel as base64 or hex inside the document.
    """
    with cfg.open_store() as store, _locked(store) as tx:
        header = tx.lock(oid)
        if length is None:
            if offset > header.data_end:
                raise bad_parameter(
                    "--offset",
                    f"{offset:#x} is beyond the data end {header.data_end:#x}; give --length",
                )
            length = header.data_end - offset
        _check_range(header, offset, length, "--offset", "--length")
        data = tx.read(oid, offset, length)
    doc: dict[str, Any] = {"object_id": str(oid), "offset": offset, "length": length}
    emit_bytes(cfg.emit, cfg.json or as_json, doc, data, out, encoding)


def _fot_row(store: Store, oid: ObjectId, index: int) -> dict[str, Any]:
    row: dict[str, Any] = {"index": index}
    obj = store.get(oid)
    try:
        entry = obj.fot_entry(index)
    except CorruptObject as exc:
        return row | {"kind": "CORRUPT", "error": str(exc)}
    row["flags"] = flag_names(entry.flags, FotFlags)
    if not entry.is_valid:
        return row | {"kind": "EMPTY"}
    if entry.target is not None:
        return row | {"kind": "ID", "target": str(entry.target)}
    try:
        return row | {"kind": "NAME", "name": obj.entry_name(entry)}
    except DtwzError as exc:
        return row | {"kind": "NAME", "error": str(exc)}


@click.command()
@click.argument("oid", type=OID)
@json_option
@pass_config
def show(cfg: CliConfig, oid: ObjectId, as_json: bool) -> None:
    """Show an object's header and its FOT entries."""
    with cfg.open_store() as store, _locked(store) as tx:
        header = tx.lock(oid)
        fot = [_fot_row(store, oid, i) for i in range(1, header.fot_count + 1)]
    doc = _header_doc(header) | {"fot": fot}
    lines = [
        f"object     {header.object_id}",
        f"size       {header.max_size} ({human_size(header.max_size)})",
        f"flags      {' '.join(doc['flags']) or '-'}",
        f"prot       {doc['prot']}",
        f"data       {DATA_START:#x}..{header.data_end:#x} ({header.data_len} bytes)",
        f"version    {header.version}",
        f"fot_count  {header.fot_count}",
        f"free       {header.free_bytes} bytes",
    ]
    if fot:
        lines.append(f"\n{'INDEX':>5}  {'KIND':7} {'TARGET / NAME':32}  FLAGS")
        for row in fot:
            what = row.get("target") or (repr(row["name"]) if "name" in row else row.get("error"))
            flags = "|".join(row.get("flags", [])) or "-"
            lines.append(f"{row['index']:>5}  {row['kind']:7} {what or '-':32}  {flags}")
    cfg.emit(as_json, doc, "\n".join(lines))


@click.command("ls")
@json_option
@pass_config
def list_objects(cfg: CliConfig, as_json: bool) -> None:
    """List the objects with size, data length and version."""
    rows: list[dict[str, Any]] = []
    with cfg.open_store() as store:
        for oid in store.object_ids():
            try:
                with _locked(store) as tx:
                    rows.append(_header_doc(tx.lock(oid)))
            except ObjectNotFound:
                continue  # deleted while we listed
            except CorruptObject as exc:
                rows.append({"object_id": str(oid), "error": str(exc)})
    lines = [f"{'OBJECT':32}  {'SIZE':>10}  {'DATA_LEN':>10}  {'VERSION':>7}  FLAGS"]
    for row in rows:
        if "error" not in row:
            flags = " ".join(row["flags"]) or "-"
            lines.append(
                f"{row['object_id']:32}  {row['size']:>10}  {row['data_len']:>10}  "
                f"{row['version']:>7}  {flags}"
            )
    cfg.emit(as_json, {"store": str(cfg.store), "objects": rows}, "\n".join(lines))
    broken = [row for row in rows if "error" in row]
    for row in broken:
        fail(f"object {row['object_id']}: {row['error']}", EXIT_RUNTIME)
    if broken:
        click.get_current_context().exit(EXIT_RUNTIME)


def _fot_flags(prot: Protection) -> FotFlags:
    flags = FotFlags.NONE
    for bit, flag in (
        (Protection.READ, FotFlags.READ),
        (Protection.WRITE, FotFlags.WRITE),
        (Protection.EXEC, FotFlags.EXEC),
    ):
        if prot & bit:
            flags |= flag
    return flags


@click.command()
@click.argument("source", type=OID)
@click.argument("target", type=OID)
@click.option("--at", type=OFFSET, help="Where in SOURCE to store the pointer  [default: append]")
@click.option(
    "--target-offset",
    type=OFFSET,
    default=DATA_START,
    help="Where in TARGET the pointer leads.  [default: 0x1000]",
)
@click.option(
    "--rights", type=PROT, default="rw", show_default=True, help="Rights recorded in the FOT entry."
)
@json_option
@pass_config
def link(
    cfg: CliConfig,
    source: ObjectId,
    target: ObjectId,
    at: int | None,
    target_offset: int,
    rights: Protection,
    as_json: bool,
) -> None:
    """Store in SOURCE a persistent pointer to TARGET.

    The pointer goes through an FOT entry of SOURCE: an existing one with the
    same target and rights, or a new one written in the same transaction.
    Prints the pointer as FOT-index:offset.
    """
    with cfg.open_store() as store, store.transaction() as tx:
        header = tx.lock(source)
        target_size = store.header(target).max_size  # ObjectNotFound for a bad target
        if not DATA_START <= target_offset < target_size:
            raise bad_parameter(
                "--target-offset",
                f"{target_offset:#x} is outside {DATA_START:#x}..{target_size:#x}, "
                f"the data space of object {target}",
            )
        if at is None:
            at = tx.alloc(source, 8, 8)
        _check_range(header, at, 8, "--at")
        word = tx.write_pointer(source, at, target, target_offset, _fot_flags(rights))
        new_entry = tx.header(source).fot_count > header.fot_count
    pointer = PersistentPointer.decode(word)
    doc = {
        "object_id": str(source),
        "at": at,
        "pointer": str(pointer),
        "word": word,
        "fot_index": pointer.fot_index,
        "new_fot_entry": new_entry,
        "target": str(target),
        "offset": target_offset,
    }
    cfg.emit(as_json, doc, f"{pointer}  (stored at {at:#x}; leads to {target}:{target_offset:#x})")


@click.command()
@click.argument("oid", type=OID)
@click.option("--at", type=OFFSET, required=True, help="Where in OID the pointer is stored.")
@json_option
@pass_config
def deref(cfg: CliConfig, oid: ObjectId, at: int, as_json: bool) -> None:
    """Show where the pointer stored in OID at --at leads.

    Follows it exactly as a program would: FOT entry, target object, bounds.
    """
    with cfg.open_store() as store, _locked(store) as tx:
        _check_range(tx.lock(oid), at, 8, "--at")
        obj = store.get(oid)
        word = obj.read_u64(at)
        pointer = PersistentPointer.decode(word)
        doc: dict[str, Any] = {
            "object_id": str(oid),
            "at": at,
            "pointer": str(pointer),
            "word": word,
            "fot_index": pointer.fot_index,
        }
        try:
            entry = obj.fot_entry(pointer.fot_index) if pointer.fot_index else None
            if entry is not None and entry.is_valid and entry.is_name:
                doc["name"] = obj.entry_name(entry)
            target, offset = obj.follow(word)
        except DtwzError as exc:  # same type, so the exit status stays right; plus where
            raise type(exc)(f"the pointer at {at:#x} in {oid}: {exc}") from exc
    doc |= {"target": str(target.object_id), "offset": offset}
    via = f"FOT entry {pointer.fot_index}" if pointer.fot_index else "this object"
    if "name" in doc:
        via += f", name {doc['name']!r}"
    cfg.emit(as_json, doc, f"{target.object_id}:{offset:#x}  (pointer {pointer} via {via})")


@click.command()
@json_option
@pass_config
def checkpoint(cfg: CliConfig, as_json: bool) -> None:
    """Redo the log into the objects and empty it."""
    with cfg.open_store() as store:
        store.checkpoint()
        replayed = store.stats["replayed_records"]  # opening recovers too: count both
    doc = {"store": str(cfg.store), "replayed_records": replayed}
    cfg.emit(as_json, doc, f"checkpoint done: {replayed} log records replayed")


COMMANDS: list[click.Command] = [
    init,
    create,
    put,
    get,
    show,
    list_objects,
    link,
    deref,
    checkpoint,
]
