"""Membership upkeep: join through the seeds, gossip heartbeats, reseed, leave.

The membership table itself is pure (``dtwz.resolver.membership``); this module
drives it from the event loop and the peer endpoint, and says what happened:

- **join**: ask each seed in turn until one answers with its member list, backing
  off up to 2 s between rounds; a node without other seeds has joined at once;
- **heartbeats**: every ``heartbeat_interval`` tick the table (which raises this
  node's heartbeat and judges the others) and send the member list to every live
  peer; a member whose heartbeat stops growing is SUSPECT after ``suspect_after``
  and DEAD after ``dead_after`` seconds. A missed answer is not an error: missed
  heartbeats are what failure detection counts;
- **reseed**: every ``RESEED_EVERY`` seconds join again through any seed at which
  no live member answers. Nobody gossips to the dead, so a seed that restarted
  knowing no one (a lone seed, as in a local cluster) would otherwise stay alone;
- **leave**: on shutdown, tell every live peer (LEAVE), without waiting long.

Invariants: the table changes only through ``merge``, ``tick``, ``note_left`` and
``leave``, and every event they return goes through ``_apply`` (logged, counted,
acted on): ``on_member_gone`` for a member that died, left or came back (whatever
this node kept about it is stale), ``on_change`` whenever the set of live members
changed, and once more on joining. A dead or departed member's connection is
closed; requests go only to live members (``request``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from dtwz.errors import DtwzError, HomeUnreachable
from dtwz.node.config import NodeConfig
from dtwz.node.dispatch import HandlerTable
from dtwz.resolver.membership import (
    MemberDied,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    Membership,
    MembershipEvent,
)
from dtwz.wire.kinds import MemberState
from dtwz.wire.messages import Ack, Heartbeat, Join, Leave, MemberInfo, Members, Message, Ping

log = logging.getLogger(__name__)

RESEED_EVERY = 1.0
JOIN_TIMEOUT = 1.0  # seconds a seed has to answer a Join
LEAVE_TIMEOUT = 0.5  # seconds each peer has to take a goodbye

Spawn = Callable[[Coroutine[Any, Any, Any]], None]


class PeerLink(Protocol):
    """Requests to peer addresses (``dtwz.node.peer.PeerEndpoint``)."""

    async def request(self, addr: str, message: Message, timeout: float | None = None) -> Message:
        """The peer's reply; ``PeerUnavailable`` if it does not answer in time."""

    def forget(self, addr: str) -> None:
        """Close the connection to a peer declared dead."""


class Gossip:
    """This node's membership table, kept current by gossip (see the module docstring)."""

    def __init__(
        self,
        config: NodeConfig,
        peer: PeerLink,
        *,
        stats: dict[str, int],
        spawn: Spawn,
        on_member_gone: Callable[[str], None],
        on_change: Callable[[], None],
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.peer = peer
        self.membership = Membership(
            self._me(MemberState.ALIVE, time.time_ns()),
            suspect_after=config.suspect_after,
            dead_after=config.dead_after,
        )
        self.joined = asyncio.Event()
        self._stats = stats
        self._spawn = spawn
        self._on_member_gone = on_member_gone
        self._on_change = on_change

    def _me(self, state: int, incarnation: int, heartbeat: int = 0) -> MemberInfo:
        c = self.config
        return MemberInfo(c.node_id, c.peer_addr, c.http_addr, incarnation, state, heartbeat)

    def handlers(self) -> HandlerTable:
        return {Heartbeat: self.on_heartbeat, Join: self.on_join, Leave: self.on_leave, Ping: _ack}

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        """What runs for the node's life: joining, heartbeats, reseeding."""
        return [self._join_loop(), self._heartbeat_loop(), self._reseed_loop()]

    # -- the members -----------------------------------------------------------------

    def peers(self) -> list[str]:
        """Live members other than this node."""
        return [n for n in self.membership.alive_ids() if n != self.node_id]

    def alive_ids(self) -> list[str]:
        return self.membership.alive_ids()

    def is_alive(self, node_id: str) -> bool:
        member = self.membership.get(node_id)
        return member is not None and member.state in (MemberState.ALIVE, MemberState.SUSPECT)

    def member_at(self, peer_addr: str) -> tuple[str, int] | None:
        """(node ID, state) of the member whose peer address is ``peer_addr``, if any."""
        for m in self.membership.members():
            if m.peer_addr == peer_addr:
                return m.node_id, m.state
        return None

    async def request(
        self, node_id: str, message: Message, timeout: float | None = None
    ) -> Message:
        """Send to a member by node ID (``HomeUnreachable`` if it is not a live member)."""
        member = self.membership.get(node_id)
        if member is None or member.state in (MemberState.DEAD, MemberState.LEFT):
            raise HomeUnreachable(f"node {node_id} is not a live member of the cluster")
        return await self.peer.request(member.peer_addr, message, timeout)

    async def leave(self) -> None:
        """Say goodbye to every live peer (shutdown)."""
        self.membership.leave(time.monotonic())
        goodbye = Leave(self.node_id, self.membership.me().incarnation)
        await asyncio.gather(*(self._quiet(n, goodbye) for n in self.peers()))

    async def _quiet(self, node_id: str, goodbye: Leave) -> None:
        with contextlib.suppress(DtwzError):
            await self.request(node_id, goodbye, LEAVE_TIMEOUT)

    # -- handlers --------------------------------------------------------------------

    async def on_heartbeat(self, m: Heartbeat) -> Members:
        self.membership.heard_directly(m.sender.node_id, time.monotonic())
        self._apply(self.membership.merge([m.sender, *m.members], time.monotonic()))
        return Members(self.membership.members())

    async def on_join(self, m: Join) -> Members:
        events = self.membership.merge([m.member], time.monotonic())
        self.membership.heard_directly(m.member.node_id, time.monotonic())
        self._apply(events)
        return Members(self.membership.members())

    async def on_leave(self, m: Leave) -> Ack:
        self._apply(self.membership.note_left(m.node_id, m.incarnation, time.monotonic()))
        return Ack()

    # -- loops -----------------------------------------------------------------------

    async def _join_loop(self) -> None:
        seeds = [s for s in self.config.seeds if s != self.config.peer_addr]
        if not seeds:
            self.joined.set()
            return
        delay = 0.1
        while not self.joined.is_set():
            for seed in seeds:
                try:
                    reply = await self.peer.request(seed, Join(self.membership.me()), JOIN_TIMEOUT)
                except DtwzError as exc:
                    log.debug("seed %s: %s", seed, exc)
                    continue
                if isinstance(reply, Members):
                    self._apply(self.membership.merge(reply.members, time.monotonic()))
                    self.joined.set()
                    self._on_change()
                    break
            if not self.joined.is_set():
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _reseed_loop(self) -> None:
        await self.joined.wait()
        while True:
            await asyncio.sleep(RESEED_EVERY)
            live = {
                m.peer_addr
                for m in self.membership.members()
                if m.state in (MemberState.ALIVE, MemberState.SUSPECT)
            }
            for seed in self.config.seeds:
                if seed not in live and seed != self.config.peer_addr:
                    self._spawn(self._rejoin(seed))

    async def _rejoin(self, seed: str) -> None:
        try:
            reply = await self.peer.request(seed, Join(self.membership.me()), JOIN_TIMEOUT)
        except DtwzError:
            return  # still down
        if isinstance(reply, Members):
            self._stats["rejoins"] += 1
            self._apply(self.membership.merge(reply.members, time.monotonic()))

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            self._apply(self.membership.tick(time.monotonic()))
            beat = Heartbeat(self.membership.me(), self.membership.members())
            for node_id in self.peers():
                self._spawn(self._gossip(node_id, beat, interval * 2))
            await asyncio.sleep(interval)

    async def _gossip(self, node_id: str, beat: Heartbeat, timeout: float) -> None:
        try:
            reply = await self.request(node_id, beat, timeout)
        except DtwzError:
            return  # missed heartbeats are what failure detection counts
        if isinstance(reply, Members):
            now = time.monotonic()
            self.membership.heard_directly(node_id, now)
            self._apply(self.membership.merge(reply.members, now))

    def _apply(self, events: list[MembershipEvent]) -> None:
        for event in events:
            log.info("%s: %s", self.node_id, event)
            self._stats[type(event).__name__] += 1
            if isinstance(event, MemberDied | MemberLeft | MemberRecovered):
                gone = event.node_id
                self._on_member_gone(gone)
                member = self.membership.get(gone)
                if member is not None and not isinstance(event, MemberRecovered):
                    self.peer.forget(member.peer_addr)
            if isinstance(event, MemberJoined | MemberDied | MemberLeft | MemberRecovered):
                self._on_change()


async def _ack(m: Ping) -> Ack:
    return Ack()
