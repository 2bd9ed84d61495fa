"""The wire contract and domain model: generated protobuf messages and gRPC stubs.

``from corral.proto import pb`` gives the messages (``pb.Job``, ``pb.Allocation``...);
``from corral.proto import rpc`` the gRPC stubs and servicers.
"""

from corral.proto import corral_pb2 as pb
from corral.proto import corral_pb2_grpc as rpc

__all__ = ["pb", "rpc"]
