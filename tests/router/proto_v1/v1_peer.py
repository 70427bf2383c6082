"""A peer that speaks only protocol v1: the stubs here are what router.proto generated before v2.

Run as its own process (v1's and v2's messages share full names, so one process cannot load
both): `python v1_peer.py talk HOST:PORT [TOKEN]` plays a v1 engine and a v1 ingress against a router
(sending the router's token, which is call metadata and so no part of any protocol version);
`python v1_peer.py decode` reads {"Message": "hex bytes"} on stdin and prints each as v1 reads it.
"""

from __future__ import annotations

import json
import sys

import grpc
import router_pb2 as pb
import router_pb2_grpc as pb_grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.unknown_fields import UnknownFieldSet


def talk(target: str, token: str | None) -> dict[str, object]:
    auth = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RouterStub(channel)
        worker = pb.Worker(worker_id="v1-engine", role=pb.ROLE_DECODE, model="glm-4.6-tiny", block_size=16)
        lease = stub.Register(pb.RegisterRequest(worker=worker, load=pb.Load()), timeout=5, metadata=auth)
        stub.Heartbeat(pb.HeartbeatRequest(worker_id="v1-engine", load=pb.Load(running=1)), timeout=5, metadata=auth)
        route = pb.RouteRequest(
            request_id="v1-request", tenant="acme", model="glm-4.6-tiny", prompt_token_ids=list(range(40))
        )
        decision = stub.Route(route, timeout=5, metadata=auth)
        done = stub.Complete(
            pb.CompleteRequest(request_id="v1-request", completion_tokens=3, failed=True), timeout=5, metadata=auth
        )
        return {
            "lease_s": lease.lease_s,
            "decode": decision.decode.worker_id,
            "unknown_fields": len(UnknownFieldSet(decision)),  # v2's, which v1 skips
            "known": done.known,
        }


def decode(encoded: dict[str, str]) -> dict[str, object]:
    return {name: MessageToDict(getattr(pb, name).FromString(bytes.fromhex(raw))) for name, raw in encoded.items()}


if __name__ == "__main__":
    result = talk(sys.argv[2], (sys.argv[3:] or [None])[0]) if sys.argv[1] == "talk" else decode(json.load(sys.stdin))
    json.dump(result, sys.stdout)
