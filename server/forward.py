"""Forwarding RPCs to the leader: any server accepts any request.

Writes must run on the leader; reads go there too unless the caller asked for a
``stale`` (local) read, because a follower's state may lag. A follower relays the
call over gRPC with the same method name and bytes, so no endpoint needs a second
code path. During an election the call waits (bounded) for a leader to appear.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import Message

from corral.proto import corral_pb2, pb

FORWARD_HOPS_KEY = "x-corral-forward-hops"
# Message size limit of our gRPC servers and of the channels that relay to them: a
# forwarded answer (a fleet's allocations, a big job list) is as large as a direct
# one, and gRPC's default 4 MB would fail it only when the call went through a
# follower.
GRPC_MAX_MESSAGE = 64 * 1024 * 1024
GRPC_MESSAGE_OPTIONS = [
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
]
MAX_HOPS = 3
LEADER_WAIT = 5.0


class NoLeader(Exception):
    pass


def response_class(service: str, method: str) -> type[Message]:
    desc = corral_pb2.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    cls: type[Message] = getattr(pb, desc.output_type.name)
    return cls


class Forwarder:
    def __init__(self, leader_rpc_addr: Callable[[], str], is_leader: Callable[[], bool]) -> None:
        self._leader_rpc_addr = leader_rpc_addr
        self._is_leader = is_leader
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def channel(self, addr: str) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(addr)
            if ch is None:
                ch = grpc.insecure_channel(addr, options=GRPC_MESSAGE_OPTIONS)
                self._channels[addr] = ch
            return ch

    def wait_leader_addr(self, deadline: float) -> str:
        """The leader's gRPC address, or "" when this server leads."""
        while True:
            if self._is_leader():
                return ""
            addr = self._leader_rpc_addr()
            if addr:
                return addr
            if time.monotonic() >= deadline:
                raise NoLeader("no cluster leader elected yet")
            time.sleep(0.05)

    @staticmethod
    def hops(context: grpc.ServicerContext) -> int:
        for key, value in context.invocation_metadata() or ():
            if key == FORWARD_HOPS_KEY:
                return int(value)
        return 0

    def unary(
        self,
        addr: str,
        service: str,
        method: str,
        request: Message,
        context: grpc.ServicerContext,
    ) -> Message:
        call = self.channel(addr).unary_unary(
            f"/corral.v1.{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class(service, method).FromString,
        )
        timeout = context.time_remaining()
        result: Message = call(
            request,
            timeout=timeout if timeout is not None and timeout < 1e6 else 60.0,
            metadata=((FORWARD_HOPS_KEY, str(self.hops(context) + 1)),),
        )
        return result

    def stream(
        self,
        addr: str,
        service: str,
        method: str,
        request: Message,
        context: grpc.ServicerContext,
    ) -> Iterator[Any]:
        call = self.channel(addr).unary_stream(
            f"/corral.v1.{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class(service, method).FromString,
        )
        responses = call(request, metadata=((FORWARD_HOPS_KEY, str(self.hops(context) + 1)),))
        context.add_callback(responses.cancel)
        yield from responses

    def close(self) -> None:
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()
