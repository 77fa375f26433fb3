"""The ``dtwz`` command line: a thin shell over a node's local object store.

Each command opens the store named by ``--store`` (or ``DTWZ_STORE``), does one
thing in at most one transaction, and prints a few readable lines or, with
``--json``, exactly one JSON document. Reads run under the object's lock, so they
never see half of another process's commit.

Errors never end in a traceback: every ``DtwzError`` and every bad argument ends
as one ``error: ...`` line on stderr. Exit status 2 means bad input (usage,
malformed values, offsets outside the object); 1 means the store refused at run
time (no store, no such object, corrupt data, full or immutable object, a pointer
that cannot be followed).

All commands hang off one click group, ``cli``; later groups (``node``,
``cluster``) attach with ``cli.add_command``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import click

from dtwz import __version__
from dtwz.errors import CorruptObject, DtwzError, InvalidArgument, ObjectNotFound
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, FotFlags, ObjectFlags, ObjectHeader, Protection
from dtwz.format.layout import size_log2 as check_object_size
from dtwz.format.pointers import PersistentPointer
from dtwz.store.store import Store
from dtwz.store.transaction import DEFAULT_OBJECT_SIZE, Transaction

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_STORE = "./data/store"

# -- argument types ----------------------------------------------------------------


class ObjectIdParam(click.ParamType[ObjectId]):
    name = "OID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, ObjectId):
            return value
        try:
            return ObjectId.parse(str(value))
        except DtwzError as exc:
            self.fail(str(exc), param, ctx)


class OffsetParam(click.ParamType[int]):
    """A non-negative integer, decimal or ``0x`` hex."""

    name = "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().replace("_", "")
        try:
            number = int(text[2:], 16) if text.startswith("0x") else int(text, 10)
        except ValueError:
            self.fail(f"{value!r} is not a decimal or 0x-hex number", param, ctx)
        if number < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return number


class SizeParam(click.ParamType[int]):
    """An object size: 4096, 64K, 1M, 1G (KiB units), a power of two from 4K to 1G."""

    name = "SIZE"
    _pattern = re.compile(r"(?P<number>0x[0-9a-f]+|[0-9]+) *(?P<unit>[kmg]?)(?:i?b)?")
    _shifts = {"": 0, "k": 10, "m": 20, "g": 30}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        match = self._pattern.fullmatch(str(value).strip().lower())
        if match is None:
            self.fail(f"{value!r} is not a size like 4096, 64K, 1M or 1G", param, ctx)
        number = int(match["number"], 0) << self._shifts[match["unit"]]
        try:
            check_object_size(number)
        except InvalidArgument as exc:
            self.fail(str(exc), param, ctx)
        return number


class ProtParam(click.ParamType[Protection]):
    """Rights as letters from ``rwx`` (``-`` or ``none`` for no rights)."""

    name = "RWX"
    _letters = {"r": Protection.READ, "w": Protection.WRITE, "x": Protection.EXEC}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Protection):
            return value
        text = str(value).strip().lower()
        prot = Protection.NONE
        if text not in ("-", "none"):
            if not text or len(set(text)) != len(text) or not set(text) <= set(self._letters):
                self.fail(f"{value!r} is not a set of letters from 'rwx'", param, ctx)
            for letter in text:
                prot |= self._letters[letter]
        return prot


OID = ObjectIdParam()
OFFSET = OffsetParam()
SIZE = SizeParam()
PROT = ProtParam()

# -- output and error plumbing -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CliConfig:
    """What the group's options say; every command receives it."""

    store: Path
    json: bool

    def open_store(self) -> Store:
        return Store.open(self.store)

    def emit(self, as_json: bool, doc: dict[str, Any], text: str) -> None:
        """One JSON document with ``--json`` (global or per command), else ``text``."""
        click.echo(json.dumps(doc) if self.json or as_json else text)


pass_config = click.make_pass_decorator(CliConfig)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document instead of text."
)


def _fail(message: str, code: int) -> int:
    click.echo(f"error: {' '.join(message.split()) or 'unknown error'}", err=True)
    return code


class DtwzGroup(click.Group):
    """A click group whose failures end as one ``error: ...`` line, never a traceback."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
            code = result if isinstance(result, int) else 0
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
            code = _fail("no command given", EXIT_USAGE)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            code = _fail(exc.format_message().rstrip(".") + hint, exc.exit_code)
        except click.ClickException as exc:
            code = _fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            code = _fail("interrupted", EXIT_INTERRUPTED)
        except InvalidArgument as exc:
            code = _fail(str(exc), EXIT_USAGE)
        except DtwzError as exc:
            code = _fail(str(exc), EXIT_RUNTIME)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            code = _fail(f"{exc.strerror or exc}{where}", EXIT_RUNTIME)
        sys.exit(code)


def _bad(param_hint: str, message: str) -> click.BadParameter:
    return click.BadParameter(message, param_hint=f"'{param_hint}'")


def _check_range(
    header: ObjectHeader, offset: int, length: int, hint: str, length_hint: str | None = None
) -> None:
    """User-given ranges must lie in the object's data space (bad input: exit 2)."""
    if offset < DATA_START or offset + length > header.max_size:
        in_range = DATA_START <= offset < header.max_size
        raise _bad(
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


def _read_data(text: str | None, file: BinaryIO | None, *, stdin_default: bool) -> bytes | None:
    if text is not None and file is not None:
        raise click.UsageError("give the data once: as text or with --file, not both")
    if text is not None:
        return text.encode("utf-8")
    if file is not None:
        return file.read()
    if not stdin_default:
        return None
    stdin = sys.stdin.buffer
    if stdin.isatty():
        raise click.UsageError("no data: give it as an argument, with --file, or on stdin")
    return stdin.read()


def _flag_names(flags: int, kind: type[ObjectFlags] | type[FotFlags]) -> list[str]:
    return [str(member.name) for member in kind if member & flags]


def _prot_text(prot: int) -> str:
    bits = (("r", Protection.READ), ("w", Protection.WRITE), ("x", Protection.EXEC))
    return "".join(letter for letter, bit in bits if prot & bit) or "-"


def _human_size(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"


def _header_doc(header: ObjectHeader) -> dict[str, Any]:
    return {
        "object_id": str(header.object_id),
        "size": header.max_size,
        "flags": _flag_names(header.flags, ObjectFlags),
        "prot": _prot_text(header.default_prot),
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


@click.group(
    name="dtwz",
    cls=DtwzGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DTWZ_STORE",
    show_envvar=True,
    default=DEFAULT_STORE,
    show_default=True,
    help="The store folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on every command.")
@click.version_option(__version__, prog_name="dtwz")
@click.pass_context
def cli(ctx: click.Context, store: Path, as_json: bool) -> None:
    """dtwz: a Twizzler-style persistent object store.

    Offsets are decimal or 0x hex; object IDs are 32 hex digits. The data area
    of every object starts at 0x1000.
    """
    ctx.obj = CliConfig(store, as_json)


@cli.command()
@json_option
@pass_config
def init(cfg: CliConfig, as_json: bool) -> None:
    """Create a new, empty store folder."""
    with Store.init(cfg.store) as store:
        store_id = store.store_id
    doc = {"store": str(cfg.store), "store_id": store_id}
    cfg.emit(as_json, doc, f"created store {cfg.store} (store id {store_id})")


@cli.command()
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
    data = _read_data(text, file, stdin_default=False) or None
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


@cli.command()
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
    data = _read_data(text, file, stdin_default=True)
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


@cli.command()
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
                raise _bad(
                    "--offset",
                    f"{offset:#x} is beyond the data end {header.data_end:#x}; give --length",
                )
            length = header.data_end - offset
        _check_range(header, offset, length, "--offset", "--length")
        data = tx.read(oid, offset, length)
    doc: dict[str, Any] = {"object_id": str(oid), "offset": offset, "length": length}
    emit_bytes(cfg.emit, cfg.json or as_json, doc, data, out, encoding)


def emit_bytes(
    emit: Callable[[bool, dict[str, Any], str], None],
    as_json: bool,
    doc: dict[str, Any],
    data: bytes,
    out: Path | None,
    encoding: str,
) -> None:
    """What `get` prints: raw bytes on stdout, a file, or JSON with the bytes encoded."""
    if out is not None:
        out.write_bytes(data)
        emit(as_json, doc | {"out": str(out)}, f"wrote {len(data)} bytes to {out}")
    elif as_json:
        text = base64.b64encode(data).decode() if encoding == "base64" else data.hex()
        emit(True, doc | {"encoding": encoding, "data": text}, "")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def _fot_row(store: Store, oid: ObjectId, index: int) -> dict[str, Any]:
    row: dict[str, Any] = {"index": index}
    obj = store.get(oid)
    try:
        entry = obj.fot_entry(index)
    except CorruptObject as exc:
        return row | {"kind": "CORRUPT", "error": str(exc)}
    row["flags"] = _flag_names(entry.flags, FotFlags)
    if not entry.is_valid:
        return row | {"kind": "EMPTY"}
    if entry.target is not None:
        return row | {"kind": "ID", "target": str(entry.target)}
    try:
        return row | {"kind": "NAME", "name": obj.entry_name(entry)}
    except DtwzError as exc:
        return row | {"kind": "NAME", "error": str(exc)}


@cli.command()
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
        f"size       {header.max_size} ({_human_size(header.max_size)})",
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


@cli.command("ls")
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
        _fail(f"object {row['object_id']}: {row['error']}", EXIT_RUNTIME)
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


@cli.command()
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
            raise _bad(
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


@cli.command()
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


@cli.command()
@json_option
@pass_config
def checkpoint(cfg: CliConfig, as_json: bool) -> None:
    """Redo the log into the objects and empty it."""
    with cfg.open_store() as store:
        store.checkpoint()
        replayed = store.stats["replayed_records"]  # opening recovers too: count both
    doc = {"store": str(cfg.store), "replayed_records": replayed}
    cfg.emit(as_json, doc, f"checkpoint done: {replayed} log records replayed")


def main(argv: list[str] | None = None) -> None:
    """The ``dtwz`` console script."""
    cli.main(args=argv, prog_name="dtwz")


import dtwz.cli_cluster  # noqa: E402, F401  (registers the node, cluster and remote groups)
