"""Real etcd for development and tests, ours and our users' (kazoo.testing is the model).

- :class:`EtcdServer` / :class:`EtcdCluster`: real etcd processes on free loopback ports, with
  ``kill()``, ``restart()``, ``pause()`` and friends for fault tests.
- :class:`Proxy`: a TCP proxy that cuts, restores or resets the path to an endpoint.
- :class:`GrpcProxy`: etcd's own gRPC proxy (``etcd grpc-proxy start``) in front of them.
- ``etcdkit.testing.pytest_plugin``: pytest fixtures on top of these (the plugin
  ``etcdkit.pytest_plugin``, installed with etcdkit).

Nothing here listens on anything but 127.0.0.1.
"""

from etcdkit.testing.grpc_proxy import GrpcProxy
from etcdkit.testing.ports import HOST, free_port
from etcdkit.testing.proxy import Proxy
from etcdkit.testing.server import (
    EtcdBinaryNotFoundError,
    EtcdCluster,
    EtcdServer,
    EtcdServerError,
    etcd_version,
    find_etcd_binary,
)

__all__ = [
    "HOST",
    "EtcdBinaryNotFoundError",
    "EtcdCluster",
    "EtcdServer",
    "EtcdServerError",
    "GrpcProxy",
    "Proxy",
    "etcd_version",
    "find_etcd_binary",
    "free_port",
]
