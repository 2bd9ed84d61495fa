"""Server membership: how this server announces itself, the member list with live
raft facts, and runtime membership changes."""

from __future__ import annotations

import logging

from corral.proto import pb
from corral.server.base import (
    InvalidRequest,
    ServerBase,
)

log = logging.getLogger(__name__)


class MembershipEndpoints(ServerBase):
    # ------------------------------------------------------------ membership
    def self_member(self) -> pb.ServerMember:
        addr = self.raft.self_address()
        return pb.ServerMember(
            id=addr,
            name=self.config.name or addr,
            address=addr.rsplit(":", 1)[0],
            raft_address=addr,
            rpc_address=self.config.rpc_address,
            http_address=self.config.http_address,
            voter=True,
        )

    def _announce_loop(self) -> None:
        """Make sure the state knows how to reach this server (forwarding needs
        the leader's gRPC address). Retries until it sticks; re-checks rarely."""
        import grpc

        from corral.proto import rpc

        while not self._stopping.is_set():
            me = self.self_member()
            stored = self.state.server(me.raft_address)
            if stored is None or stored.rpc_address != me.rpc_address or stored.name != me.name:
                try:
                    if self.is_leader():
                        self.propose(
                            pb.Command(server_register=pb.ServerRegisterCommand(member=me))
                        )
                    else:
                        addr = self.leader_rpc_addr()
                        if addr:
                            with grpc.insecure_channel(addr) as ch:
                                rpc.OperatorServiceStub(ch).RegisterServer(me, timeout=5)
                except Exception as exc:
                    log.debug("announcing this server failed: %s", exc)
                self._stopping.wait(0.5)
            else:
                self._stopping.wait(5.0)

    def leader_rpc_addr(self) -> str:
        leader = self.raft.leader()
        if not leader:
            return ""
        if leader == self.raft.self_address():
            return self.config.rpc_address
        member = self.state.server(leader)
        return member.rpc_address if member is not None else ""

    def members(self) -> list[pb.ServerMember]:
        """Every known server with live raft facts (never stored in the FSM)."""
        leader = self.raft.leader()
        status = self.raft.status()
        peers = set(self.raft_peers())
        out = []
        known = {m.raft_address: m for m in self.state.servers()}
        for addr in sorted(peers):
            m = pb.ServerMember()
            if addr in known:
                m.CopyFrom(known[addr])
            else:
                m.id = m.name = m.raft_address = addr
                m.address = addr.rsplit(":", 1)[0]
            m.leader = addr == leader
            m.voter = addr in peers
            if addr == self.raft.self_address():
                m.raft_state = "leader" if self.is_leader() else "follower"
                applied = status.get("last_applied")
                m.last_index = applied if isinstance(applied, int) else self.state.index
                m.healthy = True
            else:
                connected = status.get(f"partner_node_status_server_{addr}")
                m.healthy = connected == 2 or (connected is None and m.leader)
                m.raft_state = "leader" if m.leader else "follower"
                match = status.get(f"match_idx_server_{addr}")
                m.last_index = int(match) if isinstance(match, int) else 0
            out.append(m)
        return out

    def raft_peers(self) -> list[str]:
        return [self.raft.self_address(), *self.raft.other_peers()]

    def change_membership(self, address: str, add: bool) -> None:
        if not address or ":" not in address:
            raise InvalidRequest([f"address {address!r} must be host:port of a raft peer"])
        if address == self.raft.self_address() and not add:
            raise InvalidRequest(["a server cannot remove itself; remove it from another server"])
        try:
            self.raft.change_membership(address, add)
        except ValueError as exc:
            raise InvalidRequest([str(exc)]) from None
        if not add:
            # Forget its addresses too, so it no longer shows up in members.
            self.propose(pb.Command(noop=pb.NoopCommand()))
