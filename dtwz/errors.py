"""The one exception hierarchy of dtwz.

Every error that dtwz raises on purpose is a ``DtwzError``; third-party errors
(OSError, struct.error, ...) are translated at the boundary with ``raise X from exc``
so callers never have to know which library sat underneath::

    DtwzError
    ├── InvalidArgument             a value outside what the operation accepts (a ValueError)
    │   ├── RequestTooLarge         a request body larger than its route takes
    │   └── RequestTimeout          a request body that did not arrive in time
    ├── FormatError                 bytes that do not parse (header, FOT entry, log record)
    │   └── CorruptObject           an object that fails its checks (magic, CRC, ID, size)
    ├── PointerError                a persistent pointer that cannot be followed
    │   ├── NullPointer             the pointer is 0
    │   ├── BadFotIndex             FOT index beyond the object's FOT
    │   ├── InvalidFotEntry         the entry exists but is not VALID
    │   ├── PointerOutOfBounds      offset in the header page or beyond the object
    │   └── UnresolvedName          a name entry and no resolver could resolve it
    ├── ObjectNotFound              no object with that ID in this store
    ├── ObjectFull                  data and FOT would collide
    ├── ReadOnlyObject              a write to an immutable object
    ├── TransactionError            a transaction could not run as asked
    │   ├── TransactionClosed       use of a committed or aborted transaction
    │   └── TransactionConflict     a lock could not be taken in time; retry
    ├── StoreError                  the store folder is missing, foreign or unusable
    ├── ProtocolError               frames that are not a well-formed peer message
    ├── NamespaceError              a name operation that cannot be done as asked
    │   ├── NameNotFound            no binding for a component of the path
    │   ├── NameExists              the name is bound already (another bind won)
    │   ├── NotADirectory           a component that must be a directory is not one
    │   ├── DirectoryNotEmpty       removing a directory that still has entries
    │   ├── SymlinkLoop             too many symbolic links on one path (a loop)
    │   └── InvalidName             a malformed or overlong name or path
    ├── ClusterError                a request that needs another node failed
    │   ├── PeerUnavailable         a peer did not answer within the timeout
    │   ├── HomeUnreachable         the object's home node is dead or cut off
    │   ├── StaleLocation           a location record was older than the truth; retried
    │   │   └── ObjectMoved         the object migrated: its new home is in the text
    │   └── MigrationError          a migration could not be carried out
    ├── GraphError                  the object-graph service could not do what was asked
    │   └── CodeError               a code object is malformed or its function failed
    │       └── CodeTimeout         the function ran past its time limit and was stopped
    ├── QuotaExceeded               an identity's objects or bytes, or the keys enrolled, at a limit
    ├── NodeBusy                    the node is at a limit of concurrent work (uploads): retry later
    └── AccessDenied                a request lacks a valid capability or proof
        ├── InvalidCapability       malformed, forged or badly delegated capability
        ├── CapabilityExpired       a capability (or a link of its chain) is past its expiry
        ├── ReplayedRequest         a signed request seen before, or outside the time window
        ├── UnknownSession          the node has no such session (expired): open a new one
        └── UnknownKey              the request's key is not known to the cluster (register it)

``InvalidArgument`` (also a ``ValueError``) covers bad sizes, offsets and flags
given by a caller; ``InvalidName`` is one too, so a bad path is a usage error, and
so are ``RequestTooLarge`` (413: a body over its route's limit) and
``RequestTimeout`` (408: a body that did not arrive in time).

The boundary
------------
Errors cross the peer wire and HTTP by name: ``describe`` turns an exception into
``(kind, message, fields)`` and ``rebuild`` raises it again on the other side as
the same class, looked up only among the classes drawn above. Each class says
which HTTP status it answers with (``http_status``, inherited from its bases),
and an error with data of its own carries it as attributes and ``fields()``
(``ObjectMoved.home`` and ``.epoch``), never as text for the caller to parse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

_CLASSES: dict[str, type[DtwzError]] = {}


_MOVED = re.compile(r"moved to node (\S+) \(epoch (\d+)\)")


class DtwzError(Exception):
    """Base of every error dtwz raises on purpose."""

    http_status: ClassVar[int] = 500

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__ == __name__:
            _CLASSES[cls.__name__] = cls

    def fields(self) -> dict[str, Any]:
        """Data of the error beyond its message, for the wire and HTTP (JSON values)."""
        return {}

    @classmethod
    def rebuild(cls, message: str, fields: Mapping[str, Any]) -> DtwzError:
        """The error again from its message and ``fields()``, on the caller's side."""
        return cls(message)


_CLASSES["DtwzError"] = DtwzError


class InvalidArgument(DtwzError, ValueError):
    """A caller passed a value outside what the operation accepts."""

    http_status = 400


class RequestTooLarge(InvalidArgument):
    """A request body larger than its route takes (nothing of it was done)."""

    http_status = 413


class RequestTimeout(InvalidArgument):
    """A request body that did not arrive within the node's time limit."""

    http_status = 408


class FormatError(DtwzError):
    """Bytes that do not decode into the structure they should hold."""

    http_status = 400


class CorruptObject(FormatError):
    """An object whose stored bytes fail their checks."""

    http_status = 500


class PointerError(DtwzError):
    """A persistent pointer that cannot be followed."""

    http_status = 400


class NullPointer(PointerError):
    """Dereference of the NULL pointer (offset 0 of the object itself)."""


class BadFotIndex(PointerError):
    """A pointer names an FOT entry that the object does not have."""


class InvalidFotEntry(PointerError):
    """A pointer names an FOT entry that is not marked VALID."""


class PointerOutOfBounds(PointerError):
    """A pointer's offset falls in the header page or beyond the target object."""


class UnresolvedName(PointerError):
    """A name entry that no resolver could turn into an object ID."""

    http_status = 404


class ObjectNotFound(DtwzError):
    """No object with this ID exists here."""

    http_status = 404


class ObjectFull(DtwzError):
    """The object's data area and FOT would overlap."""

    http_status = 409


class ReadOnlyObject(DtwzError):
    """A write to an immutable object after its creating transaction."""

    http_status = 409


class TransactionError(DtwzError):
    """A transaction could not run as asked."""

    http_status = 409


class TransactionClosed(TransactionError):
    """The transaction has already committed or aborted."""


class TransactionConflict(TransactionError):
    """A lock could not be taken in time (possible deadlock); abort and retry."""


class StoreError(DtwzError):
    """The store folder is missing, not a dtwz store, or unusable."""


class ProtocolError(DtwzError):
    """Frames that are not a well-formed message of the peer protocol."""


class NamespaceError(DtwzError):
    """A name operation that cannot be done as asked (docs/NAMES.md)."""

    http_status = 409


class NameNotFound(NamespaceError):
    """No binding for a component of the path."""

    http_status = 404


class NameExists(NamespaceError):
    """The name is bound already; of two concurrent binds, the loser gets this."""


class NotADirectory(NamespaceError):
    """A path component that must be a directory is bound to something else."""


class DirectoryNotEmpty(NamespaceError):
    """A directory that still has entries cannot be unbound."""


class SymlinkLoop(NamespaceError):
    """More symbolic links on one path than the limit: a loop, or close enough."""

    http_status = 400


class InvalidName(NamespaceError, InvalidArgument):
    """A malformed or overlong name or path (also an ``InvalidArgument``)."""

    http_status = 400


class ClusterError(DtwzError):
    """A request that needed another node could not be served."""

    http_status = 503


class PeerUnavailable(ClusterError):
    """A peer did not answer within the request timeout."""


class HomeUnreachable(ClusterError):
    """The home node of an object is dead, unknown or cut off."""


class StaleLocation(ClusterError):
    """A location record turned out older than the truth."""


class ObjectMoved(StaleLocation):
    """The object's home moved (migration): ``home`` is the new home and ``epoch``
    the epoch of its location record, both ``None`` when the sender did not know.

    The peer wire carries type and text only, so the text always ends
    ``moved to node NODE (epoch N)``; this class is the one place that reads it.
    """

    def __init__(self, message: str, *, home: str | None = None, epoch: int | None = None):
        if home is None:
            match = _MOVED.search(message)
            if match:
                home, epoch = match.group(1), int(match.group(2))
        elif _MOVED.search(message) is None:
            message = f"{message} moved to node {home} (epoch {epoch or 0})"
        super().__init__(message)
        self.home = home
        self.epoch = epoch

    def fields(self) -> dict[str, Any]:
        return {"home": self.home, "epoch": self.epoch} if self.home is not None else {}

    @classmethod
    def rebuild(cls, message: str, fields: Mapping[str, Any]) -> DtwzError:
        home, epoch = fields.get("home"), fields.get("epoch")
        if isinstance(home, str) and isinstance(epoch, int):
            return cls(message, home=home, epoch=epoch)
        return cls(message)


class MigrationError(ClusterError):
    """A migration could not be carried out (the object stays at its old home)."""

    http_status = 409


class GraphError(DtwzError):
    """The object-graph service could not do what was asked."""

    http_status = 400


class CodeError(GraphError):
    """A code object is malformed, or its function raised or could not run."""

    http_status = 422


class CodeTimeout(CodeError):
    """A code object's function ran past its time limit and was stopped."""

    http_status = 504


class QuotaExceeded(DtwzError):
    """An identity would own more objects or bytes than its quota allows, or the
    cluster holds as many enrolled keys as it may (docs/SECURITY.md §10). Nothing
    of the refused request was done."""

    http_status = 413


class NodeBusy(DtwzError):
    """The node is at a limit of concurrent work (uploads being received): nothing
    was done; send the request again after a moment (the answer's Retry-After)."""

    http_status = 503


def moved_to(exc: ObjectMoved) -> tuple[str, int] | None:
    """(new home, epoch) named by an ``ObjectMoved`` error, if it knows them."""
    return (exc.home, exc.epoch or 0) if exc.home is not None else None


class AccessDenied(DtwzError):
    """A request lacks a valid capability or proof (docs/SECURITY.md).

    Raised as the base class itself when a well-formed, correctly signed capability
    or request simply does not cover what was asked (other object, other accessor,
    missing rights, bytes outside its gate).
    """

    http_status = 403


class InvalidCapability(AccessDenied):
    """A capability that is malformed, forged, or whose delegation chain is broken."""


class CapabilityExpired(AccessDenied):
    """A capability, or a link of its delegation chain, is past its expiry."""


class ReplayedRequest(AccessDenied):
    """A signed request whose nonce was seen before, or whose timestamp is outside
    the window in which replays can be recognised."""

    http_status = 401


class UnknownSession(AccessDenied):
    """A request made in a session the node does not have (expired, or the node
    restarted): the client should open a new session and send it again."""

    http_status = 401


class UnknownKey(AccessDenied):
    """A signed request whose key the cluster does not know: the client should store
    its public key object (``POST /keys``) and send the request again."""

    http_status = 401


_MAX_TEXT = 4096  # characters of message kept: an error must always fit its reply


def describe(exc: BaseException) -> tuple[str, str, dict[str, Any]]:
    """(kind, message, fields) of an exception as it crosses the wire or HTTP.

    dtwz errors keep their class name; anything else is a bug on the sender's side
    and travels as a plain ``DtwzError``. The message is cut to 4,096 characters
    and made valid UTF-8, so the reply that carries it always encodes.
    """
    if isinstance(exc, DtwzError):
        kind, fields = type(exc).__name__, exc.fields()
    else:
        kind, fields = "DtwzError", {}
    text = str(exc) or kind
    if len(text) > _MAX_TEXT:
        text = text[:_MAX_TEXT] + "..."
    return kind, text.encode("utf-8", "replace").decode("utf-8"), fields


def rebuild(
    kind: str,
    message: str,
    fields: Mapping[str, Any] | None = None,
    *,
    unknown: type[DtwzError] | None = None,
) -> DtwzError:
    """The error a peer or node described, as the same ``dtwz.errors`` class.

    ``kind`` is looked up only among the classes of this module. A kind this side
    does not know becomes ``unknown`` (``DtwzError`` by default) with the kind kept
    at the front of the message.
    """
    cls = _CLASSES.get(kind)
    if cls is None:
        return (unknown or DtwzError)(f"{kind}: {message}")
    return cls.rebuild(message, fields or {})


def http_status(exc: BaseException) -> int:
    """The HTTP status an error answers with: its class's, inherited from its bases."""
    return exc.http_status if isinstance(exc, DtwzError) else 500
