"""Cluster membership: gossiped heartbeats and a bounded-time failure detector. Pure.

Theory of operation
-------------------
Every node keeps a table of ``MemberInfo`` records, one per node it knows, plus its
own. The node process drives it from its event loop and acts on the events that
come back; time is always passed in (``now``, seconds), never read here::

    every heartbeat period:   events = m.tick(now); send m.members() to a few peers
    on gossip or a Join:      events = m.merge(infos, now)
    on any direct message:    m.heard_directly(sender, now)
    on a Leave message:       events = m.note_left(node_id, incarnation, now)
    on clean shutdown:        send m.leave(now) (or a Leave) to a few peers

**Heartbeats.** ``tick`` raises this node's own heartbeat counter. The counter, not a
clock, travels in gossip, so clocks need not agree. A node whose (incarnation,
heartbeat) has not grown *in this node's view* for ``suspect_after`` seconds is
SUSPECT, for ``dead_after`` seconds DEAD. Because the check runs on every tick, a
dead peer is declared dead at most ``dead_after`` plus one tick period after the last
heartbeat this node saw. SUSPECT members still count as alive (``alive_ids``):
suspicion alone moves no data.

**Merge order.** For each node the table keeps the greatest record by::

    (incarnation, state == LEFT, heartbeat, state, peer_addr, http_addr)

A total order, so merging is a join: the resulting view does not depend on the order
or repetition of gossip. Consequences:

- a new incarnation (a restart) beats everything about older ones;
- LEFT is final for its incarnation: no heartbeat of that life outranks it;
- a fresher heartbeat beats a DEAD verdict: a peer we gave up on too early comes back
  (``MemberRecovered``) as soon as newer news of it arrives;
- at equal heartbeats the graver state wins, so a verdict spreads to nodes that have
  no newer news, and stale gossip (same incarnation, old heartbeat) never undoes it.

**Refutation.** A node never accepts a record about itself. When gossip accuses it
(SUSPECT or DEAD at its current incarnation) or carries a record about it that is not
below its own, it raises its own heartbeat above the gossiped one, so its next gossip
outranks the accusation everywhere; no restart is faked. Only a LEFT record at its
incarnation, or a record with a higher incarnation (another process using the same
node ID), cannot be outranked that way: the node then takes the incarnation above it.
``refutations`` counts both, for metrics: a number that keeps growing means a
duplicate node ID.

**Forgetting.** DEAD and LEFT members are dropped ``forget_after`` seconds (default
10 x ``dead_after``) after their verdict, so the table does not grow forever. The
(incarnation, heartbeat) of a forgotten member stays behind as a small floor (the
newest ``MAX_FLOORS``): gossip at or below it is ignored, so a late, stale record
cannot bring a dead member back. A DEAD or LEFT record about a node this node never
saw alive is kept silently (no event) and never gossiped onward, so verdicts about
long-gone nodes stop circulating once every node has forgotten them.

**Events.** ``MemberJoined`` (unknown, or LEFT earlier, now alive), ``MemberSuspected``
(ALIVE -> SUSPECT), ``MemberDied`` (alive -> DEAD), ``MemberLeft`` (alive -> LEFT),
``MemberRecovered`` (DEAD -> alive, or a new incarnation of a member: ``restarted`` says
the old life, and whatever it kept in memory, is gone). Apart from this node's own
``leave``, ``alive_ids()`` changes exactly when one of Joined, Died, Left or
Recovered-from-DEAD is returned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from dtwz.errors import InvalidArgument
from dtwz.wire.kinds import MemberState
from dtwz.wire.messages import MemberInfo

__all__ = [
    "MAX_FLOORS",
    "MemberDied",
    "MemberJoined",
    "MemberLeft",
    "MemberRecovered",
    "MemberState",
    "MemberSuspected",
    "Membership",
    "MembershipEvent",
]

MAX_FLOORS = 4096
"""How many forgotten members' floors are kept (oldest dropped first)."""


_ALIVE, _SUSPECT, _DEAD, _LEFT = 0, 1, 2, 3  # plain ints: decoded records carry ints
_LIVE = (_ALIVE, _SUSPECT)


@dataclass(frozen=True, slots=True)
class MemberJoined:
    node_id: str


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    node_id: str


@dataclass(frozen=True, slots=True)
class MemberDied:
    node_id: str


@dataclass(frozen=True, slots=True)
class MemberLeft:
    node_id: str


@dataclass(frozen=True, slots=True)
class MemberRecovered:
    """Alive again after DEAD, or a new incarnation (``restarted``: its memory is gone)."""

    node_id: str
    restarted: bool = False


MembershipEvent = MemberJoined | MemberSuspected | MemberDied | MemberLeft | MemberRecovered


def _rank(info: MemberInfo) -> tuple[int, bool, int, int, str, str]:
    """The merge order: greater records replace smaller ones (see the module doc)."""
    return (
        info.incarnation,
        info.state == _LEFT,
        info.heartbeat,
        info.state,
        info.peer_addr,
        info.http_addr,
    )


def _well_formed(info: MemberInfo) -> bool:
    return (
        isinstance(info.node_id, str)
        and info.node_id != ""
        and isinstance(info.state, int)
        and _ALIVE <= info.state <= _LEFT
        and isinstance(info.incarnation, int)
        and isinstance(info.heartbeat, int)
        and info.incarnation >= 0
        and info.heartbeat >= 0
    )


class _Member:
    """This node's view of a peer: its record plus local timers."""

    __slots__ = ("announced", "heard_at", "info", "since")

    def __init__(self, info: MemberInfo, now: float, announced: bool) -> None:
        self.info = info
        self.heard_at = now  # last time (incarnation, heartbeat) grew, or it spoke to us
        self.since = now  # when the current state began (drives forgetting)
        self.announced = announced  # seen alive here: an event was returned, we gossip it


class Membership:
    """The member table of one node (see the module docstring)."""

    def __init__(
        self,
        me: MemberInfo,
        *,
        suspect_after: float,
        dead_after: float,
        forget_after: float | None = None,
    ) -> None:
        if not _well_formed(me):
            raise InvalidArgument(f"not a valid member record: {me!r}")
        if not 0 < suspect_after <= dead_after:
            raise InvalidArgument(
                f"need 0 < suspect_after <= dead_after, got {suspect_after}, {dead_after}"
            )
        if forget_after is None:
            forget_after = 10 * dead_after
        if forget_after < dead_after:
            raise InvalidArgument(f"forget_after {forget_after} < dead_after {dead_after}")
        self.suspect_after = suspect_after
        self.dead_after = dead_after
        self.forget_after = forget_after
        self.refutations = 0
        self._me = dataclasses.replace(me, state=MemberState.ALIVE)
        self._members: dict[str, _Member] = {}
        self._floors: dict[str, tuple[int, int]] = {}

    # -- queries --------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._me.node_id

    def me(self) -> MemberInfo:
        """This node's own record as it gossips it now."""
        return self._me

    def get(self, node_id: str) -> MemberInfo | None:
        if node_id == self._me.node_id:
            return self._me
        m = self._members.get(node_id)
        return None if m is None else m.info

    def state(self, node_id: str) -> MemberState | None:
        info = self.get(node_id)
        return None if info is None else MemberState(info.state)

    def peer_addr(self, node_id: str) -> str | None:
        info = self.get(node_id)
        return None if info is None else info.peer_addr

    def http_addr(self, node_id: str) -> str | None:
        info = self.get(node_id)
        return None if info is None else info.http_addr

    def alive_ids(self) -> list[str]:
        """Sorted IDs of ALIVE and SUSPECT members, this node included until it leaves."""
        ids = [i for i, m in self._members.items() if m.info.state in _LIVE]
        if self._me.state == _ALIVE:
            ids.append(self._me.node_id)
        ids.sort()
        return ids

    def members(self) -> list[MemberInfo]:
        """What to gossip: this node and every member it has seen alive, by node ID."""
        out = [m.info for m in self._members.values() if m.announced]
        out.append(self._me)
        out.sort(key=lambda info: info.node_id)
        return out

    def __len__(self) -> int:
        """Members in the table, this node included (forgotten ones are not)."""
        return len(self._members) + 1

    # -- stimuli --------------------------------------------------------------------

    def tick(self, now: float) -> list[MembershipEvent]:
        """A heartbeat period passed: beat, then judge silent members and forget old ones."""
        if self._me.state == _ALIVE:
            self._me = dataclasses.replace(self._me, heartbeat=self._me.heartbeat + 1)
        events: list[MembershipEvent] = []
        for node_id in sorted(self._members):
            m = self._members[node_id]
            state = m.info.state
            if state in _LIVE:
                silent = now - m.heard_at
                if silent >= self.dead_after:
                    self._set_state(m, _DEAD, now)
                    events.append(MemberDied(node_id))
                elif silent >= self.suspect_after and state == _ALIVE:
                    self._set_state(m, _SUSPECT, now)
                    events.append(MemberSuspected(node_id))
            elif now - m.since >= self.forget_after:
                self._forget(node_id, m.info)
        return events

    def merge(self, infos: Iterable[MemberInfo], now: float) -> list[MembershipEvent]:
        """Fold gossiped records into the table; malformed records are skipped."""
        events: list[MembershipEvent] = []
        for info in infos:
            if not _well_formed(info):
                continue
            if info.node_id == self._me.node_id:
                self._refute(info)
            else:
                self._merge_one(info, now, events)
        return events

    def heard_directly(self, node_id: str, now: float) -> None:
        """A live member spoke to us: restart its silence timers (its state is unchanged).

        Suspicion is cleared only by a newer heartbeat, which the sender's own record
        in a ``Heartbeat`` carries; this keeps the merge order the only way a record
        changes. DEAD, LEFT and unknown nodes are not revived here: their records are.
        """
        m = self._members.get(node_id)
        if m is not None and m.info.state in _LIVE and now > m.heard_at:
            m.heard_at = now

    def note_left(self, node_id: str, incarnation: int, now: float) -> list[MembershipEvent]:
        """A ``Leave`` message: ``node_id`` left cleanly in ``incarnation``."""
        m = self._members.get(node_id)
        if m is None or incarnation < m.info.incarnation:
            return []
        heartbeat = m.info.heartbeat if incarnation == m.info.incarnation else 0
        left = dataclasses.replace(
            m.info, incarnation=incarnation, heartbeat=heartbeat, state=MemberState.LEFT
        )
        return self.merge([left], now)

    def leave(self, now: float) -> MemberInfo:
        """This node shuts down cleanly: its record becomes LEFT, final for this life.

        Returns the record to send to peers. Afterwards this node no longer beats,
        refutes or counts itself alive.
        """
        if self._me.state != _LEFT:
            self._me = dataclasses.replace(
                self._me, state=MemberState.LEFT, heartbeat=self._me.heartbeat + 1
            )
        return self._me

    # -- transitions ----------------------------------------------------------------

    def _merge_one(self, info: MemberInfo, now: float, events: list[MembershipEvent]) -> None:
        node_id = info.node_id
        floor = self._floors.get(node_id)
        if floor is not None:
            if (info.incarnation, info.heartbeat) <= floor:
                return  # older than what we forgot: a stale record
            del self._floors[node_id]
        m = self._members.get(node_id)
        if m is None:
            alive = info.state in _LIVE
            self._members[node_id] = _Member(info, now, announced=alive)
            if alive:
                events.append(MemberJoined(node_id))
            return
        old = m.info
        if _rank(info) <= _rank(old):
            return
        m.info = info
        if (info.incarnation, info.heartbeat) > (old.incarnation, old.heartbeat):
            m.heard_at = now
        if info.state != old.state:
            m.since = now
        new_life = info.incarnation > old.incarnation
        if info.state in _LIVE:
            if not m.announced or old.state == _LEFT:
                m.announced = True
                events.append(MemberJoined(node_id))
            elif old.state == _DEAD or new_life:
                events.append(MemberRecovered(node_id, restarted=new_life))
            elif old.state == _ALIVE and info.state == _SUSPECT:
                events.append(MemberSuspected(node_id))
        elif m.announced and old.state in _LIVE:
            events.append(MemberDied(node_id) if info.state == _DEAD else MemberLeft(node_id))

    def _refute(self, info: MemberInfo) -> None:
        me = self._me
        if me.state == _LEFT or info.incarnation < me.incarnation:
            return
        if info.incarnation > me.incarnation or info.state == _LEFT:
            # a heartbeat cannot outrank these: take a later incarnation
            self._me = dataclasses.replace(me, incarnation=info.incarnation + 1)
            self.refutations += 1
        elif info.state != _ALIVE or _rank(info) > _rank(me):
            # an accusation, or a record that would outrank ours: beat above it
            beat = max(me.heartbeat, info.heartbeat) + 1
            self._me = dataclasses.replace(me, heartbeat=beat)
            self.refutations += 1

    def _set_state(self, m: _Member, state: int, now: float) -> None:
        m.info = dataclasses.replace(m.info, state=MemberState(state))
        m.since = now

    def _forget(self, node_id: str, info: MemberInfo) -> None:
        del self._members[node_id]
        self._floors.pop(node_id, None)  # re-insert: newest floors sit at the end
        self._floors[node_id] = (info.incarnation, info.heartbeat)
        while len(self._floors) > MAX_FLOORS:
            del self._floors[next(iter(self._floors))]
