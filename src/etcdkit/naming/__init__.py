"""etcdkit.naming: gRPC service discovery that Go's gRPC understands (etcd's naming/endpoints).

Go services find each other through etcd: Go's ``endpoints.Manager`` writes one key per
endpoint under a *target*, and the ``etcd:///target`` resolver balances calls over them. This
package reads and writes the same keys and values, both ways:

- ``etcd.endpoint_manager(target)`` (:class:`EndpointManager`): Go's ``endpoints.NewManager``:
  ``add`` / ``delete`` / ``list``, ``watch()`` (exact views with their changes) and
  ``register(addr)`` (kept under a lease while open). ``etcdkit.Client.endpoint_manager``
  gives the blocking twin (:class:`SyncEndpointManager`).
- :class:`Endpoint` — ``Endpoint(addr, metadata)``; :func:`encode_endpoint` /
  :func:`decode_endpoint` — Go's JSON record ``{"Op":0,"Addr":...,"Metadata":...}``.
- :mod:`etcdkit.naming.grpc` — ``channel(etcd, target)``: a ``grpc.aio`` channel that
  balances calls over the live endpoints (round robin or pick first), and its blocking twin
  ``sync_channel(client, target)``. Imported on its own: the rest of the package does not
  need grpc.

Example (a Python server that Go clients of ``etcd:///services/echo`` call)::

    eps = etcd.endpoint_manager("services/echo")
    async with eps.register("10.0.0.5:50051", ttl=10) as reg:
        await reg.registered(timeout=5)
        await server.wait_for_termination()
"""

from etcdkit.naming._record import Endpoint, decode_endpoint, encode_endpoint
from etcdkit.naming.endpoints import EndpointManager, SyncEndpointManager, endpoint_item

__all__ = [
    "Endpoint",
    "EndpointManager",
    "SyncEndpointManager",
    "decode_endpoint",
    "encode_endpoint",
    "endpoint_item",
]
