"""The etcd Auth service as :class:`Auth` (``etcd.auth``): users, roles, permissions, and auth
on or off. See :mod:`etcdkit._wire.admin` for what every administration call shares: arguments
checked before any I/O, then one RPC through the connection, errors mapped at the boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aetcd import rpc

from etcdkit._admin_types import PERMISSION_TYPES, AuthStatus, Permission, PermissionType
from etcdkit._errors import ServerError
from etcdkit._types import prefix_range_end, to_bytes
from etcdkit._wire.kv import header_of

if TYPE_CHECKING:
    from etcdkit._core import Core

__all__ = ["Auth"]

_PERM_TO_WIRE: dict[str, int] = {
    "read": rpc.Permission.READ,
    "write": rpc.Permission.WRITE,
    "readwrite": rpc.Permission.READWRITE,
}
_PERM_FROM_WIRE: dict[int, PermissionType] = {
    rpc.Permission.READ: "read",
    rpc.Permission.WRITE: "write",
    rpc.Permission.READWRITE: "readwrite",
}


# -- argument checks (before any I/O) -------------------------------------------------------------


def _name(value: object, what: str, *, secret: bool = False) -> str:
    """``value``, a non-empty str; a ``secret`` one is never shown in the error."""
    if not isinstance(value, str):
        shown = "" if secret else f": {value!r:.80}"
        raise TypeError(f"{what} must be a str, got {type(value).__name__}{shown}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    return value


def _perm(value: object) -> int:
    if not isinstance(value, str):
        raise TypeError(
            f"perm must be one of {', '.join(map(repr, PERMISSION_TYPES))}, "
            f"got {type(value).__name__}: {value!r:.40}"
        )
    if value not in _PERM_TO_WIRE:
        raise ValueError(
            f"perm must be one of {', '.join(map(repr, PERMISSION_TYPES))}, got {value!r}"
        )
    return _PERM_TO_WIRE[value]


def _perm_range(
    key: str | bytes, range_end: str | bytes | None, prefix: bool
) -> tuple[bytes, bytes]:
    """The ``(key, range_end)`` a permission covers, as etcdctl computes it."""
    raw = to_bytes(key, "key")
    if not isinstance(prefix, bool):
        raise TypeError(f"prefix must be True or False, got {prefix!r:.40}")
    if prefix:
        if range_end is not None:
            raise ValueError("pass range_end or prefix=True, not both")
        if not raw:
            return b"\0", b"\0"  # every key (etcd's spelling of the empty prefix)
        return raw, prefix_range_end(raw)
    if not raw:
        raise ValueError("key must not be empty (for every key, pass key='' with prefix=True)")
    return raw, b"" if range_end is None else to_bytes(range_end, "range_end")


class Auth:
    """Users, roles and permissions, and auth on or off (etcd's Auth service; ``etcdctl
    user ...``, ``role ...``, ``auth ...``).

    Once auth is enabled, etcd serves only authenticated clients: create the ``root`` user
    with the ``root`` role before :meth:`enable`, and make clients with ``username`` and
    ``password``. A client without them then gets :class:`AuthError`; a user whose roles do
    not cover a key gets :class:`PermissionDeniedError`. Changing users and roles needs the
    ``root`` role while auth is enabled."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def __repr__(self) -> str:
        return f"<Auth of {self._core.where}>"

    async def _call(self, what: str, method: str, request: Any, *, idempotent: bool) -> Any:
        self._core.check_open()
        return await self._core.conn.call(what, "auth", method, request, idempotent=idempotent)

    async def enable(self) -> None:
        """Turn auth on. etcd refuses (:class:`ServerError`) unless the user ``root`` exists
        and has the role ``root``. Afterwards clients without credentials get
        :class:`AuthError`; so does this client, if it was made without them."""
        try:
            await self._call("enable auth", "AuthEnable", rpc.AuthEnableRequest(), idempotent=True)
        except ServerError as exc:
            if "root" not in str(exc):
                raise
            raise ServerError(
                f"{exc} (before enabling auth, add the user 'root' and grant it the role 'root': "
                "auth.user_add('root', password), auth.role_add('root'), "
                "auth.user_grant_role('root', 'root'))"
            ) from exc.__cause__

    async def disable(self) -> None:
        """Turn auth off (needs the ``root`` role). Afterwards etcd serves every client, but
        refuses to authenticate: clients made with ``username``/``password`` then get
        :class:`AuthError`; make new ones without credentials."""
        await self._call("disable auth", "AuthDisable", rpc.AuthDisableRequest(), idempotent=True)

    async def status(self) -> AuthStatus:
        """Whether auth is enabled and the auth store's revision, as an :class:`AuthStatus`.
        Needs etcd 3.5 or later: etcd 3.4 has no such call (:class:`ServerError`, saying so)."""
        resp = await self._call(
            "auth status", "AuthStatus", rpc.AuthStatusRequest(), idempotent=True
        )
        return AuthStatus(bool(resp.enabled), int(resp.authRevision), header_of(resp.header))

    # -- users ------------------------------------------------------------------------------------

    async def user_add(self, name: str, password: str | None) -> None:
        """Add the user ``name`` with ``password``; ``None`` makes a user without a password
        (it can only authenticate with a TLS client certificate whose common name is
        ``name``). An existing user raises :class:`ServerError`."""
        user = _name(name, "name")
        if password is not None:
            _name(password, "password (None for a user without password)", secret=True)
        request = rpc.AuthUserAddRequest(
            name=user,
            password=password or "",
            options=rpc.UserAddOptions(no_password=password is None),
        )
        await self._call(f"add user {user!r}", "UserAdd", request, idempotent=False)

    async def user_get(self, name: str) -> list[str]:
        """The roles granted to the user ``name``, sorted. An unknown user raises
        :class:`ServerError` ("user name not found")."""
        user = _name(name, "name")
        resp = await self._call(
            f"get user {user!r}", "UserGet", rpc.AuthUserGetRequest(name=user), idempotent=True
        )
        return sorted(resp.roles)

    async def user_list(self) -> list[str]:
        """The names of every user, sorted."""
        resp = await self._call(
            "list users", "UserList", rpc.AuthUserListRequest(), idempotent=True
        )
        return sorted(resp.users)

    async def user_delete(self, name: str) -> None:
        """Delete the user ``name``. An unknown user raises :class:`ServerError`; while auth is
        enabled etcd refuses to delete ``root``."""
        user = _name(name, "name")
        await self._call(
            f"delete user {user!r}",
            "UserDelete",
            rpc.AuthUserDeleteRequest(name=user),
            idempotent=False,
        )

    async def user_change_password(self, name: str, password: str) -> None:
        """Set the password of the user ``name``; its clients authenticate again with the new
        one. An unknown user raises :class:`ServerError`."""
        user = _name(name, "name")
        secret = _name(password, "password", secret=True)
        await self._call(
            f"change the password of {user!r}",
            "UserChangePassword",
            rpc.AuthUserChangePasswordRequest(name=user, password=secret),
            idempotent=True,
        )

    async def user_grant_role(self, user: str, role: str) -> None:
        """Grant the role ``role`` to the user ``user``. An unknown user or role raises
        :class:`ServerError`."""
        u, r = _name(user, "user"), _name(role, "role")
        await self._call(
            f"grant role {r!r} to {u!r}",
            "UserGrantRole",
            rpc.AuthUserGrantRoleRequest(user=u, role=r),
            idempotent=False,
        )

    async def user_revoke_role(self, user: str, role: str) -> None:
        """Take the role ``role`` from the user ``user``. A role the user does not have raises
        :class:`ServerError`."""
        u, r = _name(user, "user"), _name(role, "role")
        await self._call(
            f"revoke role {r!r} from {u!r}",
            "UserRevokeRole",
            rpc.AuthUserRevokeRoleRequest(name=u, role=r),
            idempotent=False,
        )

    # -- roles ------------------------------------------------------------------------------------

    async def role_add(self, name: str) -> None:
        """Add the role ``name`` (without permissions; ``root`` is the all-powerful role). An
        existing role raises :class:`ServerError`."""
        role = _name(name, "name")
        await self._call(
            f"add role {role!r}", "RoleAdd", rpc.AuthRoleAddRequest(name=role), idempotent=False
        )

    async def role_get(self, name: str) -> list[Permission]:
        """The permissions of the role ``name``, as a list of :class:`Permission`. An unknown
        role raises :class:`ServerError` ("role name not found")."""
        role = _name(name, "name")
        resp = await self._call(
            f"get role {role!r}", "RoleGet", rpc.AuthRoleGetRequest(role=role), idempotent=True
        )
        return [
            Permission(_PERM_FROM_WIRE.get(int(p.permType), "readwrite"), p.key, p.range_end)
            for p in resp.perm
        ]

    async def role_list(self) -> list[str]:
        """The names of every role, sorted."""
        resp = await self._call(
            "list roles", "RoleList", rpc.AuthRoleListRequest(), idempotent=True
        )
        return sorted(resp.roles)

    async def role_delete(self, name: str) -> None:
        """Delete the role ``name`` (users that had it lose it). An unknown role raises
        :class:`ServerError`; while auth is enabled etcd refuses to delete ``root``."""
        role = _name(name, "name")
        await self._call(
            f"delete role {role!r}",
            "RoleDelete",
            rpc.AuthRoleDeleteRequest(role=role),
            idempotent=False,
        )

    async def role_grant_permission(
        self,
        role: str,
        key: str | bytes,
        range_end: str | bytes | None = None,
        *,
        prefix: bool = False,
        perm: PermissionType = "readwrite",
    ) -> None:
        """Let the role ``role`` read, write or both (``perm``: ``"read"``, ``"write"`` or
        ``"readwrite"``) the key ``key``, the range ``[key, range_end)``, or with
        ``prefix=True`` every key starting with ``key`` (``key=""``: every key). Granting a
        range the role already has replaces its ``perm``. An unknown role raises
        :class:`ServerError`."""
        r = _name(role, "role")
        start, end = _perm_range(key, range_end, prefix)
        wire = _perm(perm)
        await self._call(
            f"grant {perm} on {start!r} to role {r!r}",
            "RoleGrantPermission",
            rpc.AuthRoleGrantPermissionRequest(
                name=r, perm=rpc.Permission(permType=wire, key=start, range_end=end)
            ),
            idempotent=True,
        )

    async def role_revoke_permission(
        self,
        role: str,
        key: str | bytes,
        range_end: str | bytes | None = None,
        *,
        prefix: bool = False,
    ) -> None:
        """Take from the role ``role`` its permission on exactly this key or range (as it was
        granted: same ``key`` and ``range_end``, or ``prefix``). A permission the role does
        not have raises :class:`ServerError`."""
        r = _name(role, "role")
        start, end = _perm_range(key, range_end, prefix)
        await self._call(
            f"revoke the permission on {start!r} from role {r!r}",
            "RoleRevokePermission",
            rpc.AuthRoleRevokePermissionRequest(role=r, key=start, range_end=end),
            idempotent=False,
        )
