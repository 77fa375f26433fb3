"""The one exception hierarchy of dtwz.

Every error that dtwz raises on purpose is a ``DtwzError``; third-party errors
(OSError, struct.error, ...) are translated at the boundary with ``raise X from exc``
so callers never have to know which library sat underneath::

    DtwzError
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
    └── AccessDenied                a request lacks a valid capability or proof
        ├── InvalidCapability       malformed, forged or badly delegated capability
        ├── CapabilityExpired       a capability (or a link of its chain) is past its expiry
        ├── ReplayedRequest         a signed request seen before, or outside the time window
        ├── UnknownSession          the node has no such session (expired): open a new one
        └── UnknownKey              the request's key is not known to the cluster (register it)

``InvalidArgument`` (also a ``ValueError``) covers bad sizes, offsets and flags
given by a caller; ``InvalidName`` is one too, so a bad path is a usage error.
"""

from __future__ import annotations

import re


class DtwzError(Exception):
    """Base of every error dtwz raises on purpose."""


class InvalidArgument(DtwzError, ValueError):
    """A caller passed a value outside what the operation accepts."""


class FormatError(DtwzError):
    """Bytes that do not decode into the structure they should hold."""


class CorruptObject(FormatError):
    """An object whose stored bytes fail their checks."""


class PointerError(DtwzError):
    """A persistent pointer that cannot be followed."""


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


class ObjectNotFound(DtwzError):
    """No object with this ID exists here."""


class ObjectFull(DtwzError):
    """The object's data area and FOT would overlap."""


class ReadOnlyObject(DtwzError):
    """A write to an immutable object after its creating transaction."""


class TransactionError(DtwzError):
    """A transaction could not run as asked."""


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


class NameNotFound(NamespaceError):
    """No binding for a component of the path."""


class NameExists(NamespaceError):
    """The name is bound already; of two concurrent binds, the loser gets this."""


class NotADirectory(NamespaceError):
    """A path component that must be a directory is bound to something else."""


class DirectoryNotEmpty(NamespaceError):
    """A directory that still has entries cannot be unbound."""


class SymlinkLoop(NamespaceError):
    """More symbolic links on one path than the limit: a loop, or close enough."""


class InvalidName(NamespaceError, InvalidArgument):
    """A malformed or overlong name or path (also an ``InvalidArgument``)."""


class ClusterError(DtwzError):
    """A request that needed another node could not be served."""


class PeerUnavailable(ClusterError):
    """A peer did not answer within the request timeout."""


class HomeUnreachable(ClusterError):
    """The home node of an object is dead, unknown or cut off."""


class StaleLocation(ClusterError):
    """A location record turned out older than the truth."""


class ObjectMoved(StaleLocation):
    """The object's home moved (migration). Only type and text cross the wire, so
    the text always ends ``moved to node NODE (epoch N)``: see ``moved_to``."""


class MigrationError(ClusterError):
    """A migration could not be carried out (the object stays at its old home)."""


class GraphError(DtwzError):
    """The object-graph service could not do what was asked."""


class CodeError(GraphError):
    """A code object is malformed, or its function raised or could not run."""


class CodeTimeout(CodeError):
    """A code object's function ran past its time limit and was stopped."""


_MOVED = re.compile(r"moved to node (\S+) \(epoch (\d+)\)")


def moved_to(exc: ObjectMoved) -> tuple[str, int] | None:
    """(new home, epoch) named by an ``ObjectMoved`` error, if its text says so."""
    match = _MOVED.search(str(exc))
    return (match.group(1), int(match.group(2))) if match else None


class AccessDenied(DtwzError):
    """A request lacks a valid capability or proof (docs/SECURITY.md).

    Raised as the base class itself when a well-formed, correctly signed capability
    or request simply does not cover what was asked (other object, other accessor,
    missing rights, bytes outside its gate).
    """


class InvalidCapability(AccessDenied):
    """A capability that is malformed, forged, or whose delegation chain is broken."""


class CapabilityExpired(AccessDenied):
    """A capability, or a link of its delegation chain, is past its expiry."""


class ReplayedRequest(AccessDenied):
    """A signed request whose nonce was seen before, or whose timestamp is outside
    the window in which replays can be recognised."""


class UnknownSession(AccessDenied):
    """A request made in a session the node does not have (expired, or the node
    restarted): the client should open a new session and send it again."""


class UnknownKey(AccessDenied):
    """A signed request whose key the cluster does not know: the client should store
    its public key object (``POST /keys``) and send the request again."""
