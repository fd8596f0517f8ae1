"""The threaded face of the administration API: blocking twins of :class:`Members`,
:class:`Maintenance` and :class:`Auth` (``client.members`` etc. on :class:`etcdkit.Client`).

Made with the generic twin maker (:mod:`etcdkit._blocking.twin`): each method is the asyncio
one run on the client's loop thread, with the same parameters, result, errors and docstring.
"""

from __future__ import annotations

from etcdkit._blocking.twin import Twin, blocking
from etcdkit._wire.admin import Auth, Maintenance, Members

__all__ = ["SyncAuth", "SyncMaintenance", "SyncMembers"]


class SyncMembers(Twin[Members]):
    """Blocking twin of :class:`Members` (``client.members``)."""

    list = blocking(Members.list)
    add = blocking(Members.add)
    remove = blocking(Members.remove)
    update = blocking(Members.update)
    promote = blocking(Members.promote)


class SyncMaintenance(Twin[Maintenance]):
    """Blocking twin of :class:`Maintenance` (``client.maintenance``)."""

    status = blocking(Maintenance.status)
    alarms = blocking(Maintenance.alarms)
    activate = blocking(Maintenance.activate)
    disarm = blocking(Maintenance.disarm)
    defragment = blocking(Maintenance.defragment)
    hash_kv = blocking(Maintenance.hash_kv)
    hash = blocking(Maintenance.hash)
    move_leader = blocking(Maintenance.move_leader)
    snapshot = blocking(Maintenance.snapshot)


class SyncAuth(Twin[Auth]):
    """Blocking twin of :class:`Auth` (``client.auth``)."""

    enable = blocking(Auth.enable)
    disable = blocking(Auth.disable)
    status = blocking(Auth.status)
    user_add = blocking(Auth.user_add)
    user_get = blocking(Auth.user_get)
    user_list = blocking(Auth.user_list)
    user_delete = blocking(Auth.user_delete)
    user_change_password = blocking(Auth.user_change_password)
    user_grant_role = blocking(Auth.user_grant_role)
    user_revoke_role = blocking(Auth.user_revoke_role)
    role_add = blocking(Auth.role_add)
    role_get = blocking(Auth.role_get)
    role_list = blocking(Auth.role_list)
    role_delete = blocking(Auth.role_delete)
    role_grant_permission = blocking(Auth.role_grant_permission)
    role_revoke_permission = blocking(Auth.role_revoke_permission)
