"""The router's gRPC API. `router.proto` is the source; the `router_pb2*` stubs next to it are
generated from it by `python -m glmserve.router.proto.generate` and committed, so installing
glmserve needs no protoc; tests/router/test_proto_stubs.py fails when they drift apart."""
