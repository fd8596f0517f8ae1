"""python-etcd3 0.12's public API on etcdkit: ``import etcdkit.compat.etcd3 as etcd3``.

::

    import etcdkit.compat.etcd3 as etcd3

    etcd = etcd3.client(host="127.0.0.1", port=2379)
    etcd.put("/config/a", "1")
    value, meta = etcd.get("/config/a")
    with etcd.lock("jobs", ttl=20) as lock:
        ...

Every call goes through etcdkit's threaded :class:`etcdkit.Client` (``etcd.native``), so
watches resume after faults without losing events, locks queue fairly and release their
leases, and errors arrive as python-etcd3's exceptions (:mod:`.exceptions`), each raised from
the etcdkit error it stands for. The deliberate differences from python-etcd3 are listed on
the migration page of the docs ("Moving from python-etcd3"). Not provided: the generated
``etcd3.etcdrpc`` messages and ``etcd3.utils``.
"""

from etcdkit.compat.etcd3 import (
    events,
    exceptions,
    leases,
    locks,
    members,
    transactions,
    watch,
)
from etcdkit.compat.etcd3.client import (
    Alarm,
    Etcd3Client,
    KVMetadata,
    Status,
    Transactions,
    client,
)
from etcdkit.compat.etcd3.events import DeleteEvent, Event, PutEvent
from etcdkit.compat.etcd3.exceptions import Etcd3Exception
from etcdkit.compat.etcd3.leases import Lease
from etcdkit.compat.etcd3.locks import Lock
from etcdkit.compat.etcd3.members import Member

__version__ = "0.12.0"  # the python-etcd3 API this module speaks

__all__ = [
    "Alarm",
    "DeleteEvent",
    "Etcd3Client",
    "Etcd3Exception",
    "Event",
    "KVMetadata",
    "Lease",
    "Lock",
    "Member",
    "PutEvent",
    "Status",
    "Transactions",
    "client",
    "events",
    "exceptions",
    "leases",
    "locks",
    "members",
    "transactions",
    "watch",
]
