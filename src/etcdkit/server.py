"""Compatibility name for :mod:`etcdkit.testing` (real etcd processes for tests)."""

from etcdkit.testing import (
    HOST,
    EtcdBinaryNotFoundError,
    EtcdCluster,
    EtcdServer,
    EtcdServerError,
    GrpcProxy,
    Proxy,
    etcd_version,
    find_etcd_binary,
    free_port,
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
