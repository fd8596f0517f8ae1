"""The wire: the only modules of the client that import grpc or protobuf (aetcd's generated
etcd v3 messages and stubs). Nothing outside this package sees a wire message: the client, the
core and the recipes get typed values (``etcdkit._types``) and etcdkit's errors.

- ``conn``: channels per endpoint, failover, deadlines, the mapping of gRPC errors;
- ``kv``: KV, txn and lease calls, as typed values;
- ``watch_hub``: every watch of a client on its one Watch stream, resumed after faults;
- ``keepalive``: every lease a client keeps alive on its one LeaseKeepAlive stream;
- ``admin``, ``admin_auth``: the Cluster, Maintenance and Auth services.

An import-linter contract in ``pyproject.toml`` and ``tests/test_layers.py`` keep grpc here
(``etcdkit.cluster.grpc`` and ``etcdkit.naming.grpc`` speak it too: they make gRPC channels
for users' own services, not etcd's).
"""
