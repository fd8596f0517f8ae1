"""etcdkit.naming: Go's endpoint record (byte-exact writing, Go-faithful reading) and the
EndpointManager (add, delete, list, watch, register) on real etcd, both faces."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etcdkit import (
    AsyncClient,
    ChangeKind,
    Client,
    Endpoint,
    EndpointManager,
    LeaseState,
    PersistentLease,
    SyncEndpointManager,
)
from etcdkit.cluster._gojson import GO_MAX_DEPTH, loads_object
from etcdkit.naming import decode_endpoint, encode_endpoint
from etcdkit.naming._record import MAX_DEPTH
from etcdkit.testing import EtcdServer

WAIT = 10.0


# -- the record ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "metadata", "want"),
    [
        ("10.0.0.1:80", None, '{"Op":0,"Addr":"10.0.0.1:80","Metadata":null}'),
        ("h:1", "zone-a", '{"Op":0,"Addr":"h:1","Metadata":"zone-a"}'),
        ("a<b>&c", "é\u2028", '{"Op":0,"Addr":"a\\u003cb\\u003e\\u0026c","Metadata":"é\\u2028"}'),
        ("h:1", 'q"\\\n\t', '{"Op":0,"Addr":"h:1","Metadata":"q\\"\\\\\\n\\t"}'),
        (
            "h:1",
            {"z": 1, "a": [True, None]},
            '{"Op":0,"Addr":"h:1","Metadata":{"a":[true,null],"z":1}}',
        ),
        ("h:1", 1.0, '{"Op":0,"Addr":"h:1","Metadata":1}'),
        ("h:1", -0.0, '{"Op":0,"Addr":"h:1","Metadata":-0}'),
        ("h:1", 123.456, '{"Op":0,"Addr":"h:1","Metadata":123.456}'),
        ("h:1", 1e-6, '{"Op":0,"Addr":"h:1","Metadata":0.000001}'),
        ("h:1", 1e-7, '{"Op":0,"Addr":"h:1","Metadata":1e-7}'),
        ("h:1", 2.5e-10, '{"Op":0,"Addr":"h:1","Metadata":2.5e-10}'),
        ("h:1", 1e20, '{"Op":0,"Addr":"h:1","Metadata":100000000000000000000}'),
        ("h:1", 1.5e21, '{"Op":0,"Addr":"h:1","Metadata":1.5e+21}'),
        ("h:1", 1e100, '{"Op":0,"Addr":"h:1","Metadata":1e+100}'),
        ("h:1", 12, '{"Op":0,"Addr":"h:1","Metadata":12}'),
    ],
)
def test_records_are_written_as_go_marshals_them(addr: str, metadata: Any, want: str) -> None:
    assert encode_endpoint(addr, metadata) == want
    assert Endpoint(addr, metadata).encode() == want


@pytest.mark.parametrize(
    ("addr", "metadata", "error"),
    [
        (b"h:1", None, TypeError),
        ("", None, ValueError),
        ("h:1", float("nan"), ValueError),
        ("h:1", float("inf"), ValueError),
        ("h:1", object(), TypeError),
        ("h:1", {1: "x"}, TypeError),
        ("h:1", "\ud800", ValueError),
        ("h:1", 10**400, ValueError),  # beyond a float64: Go (and list()) could not read it
        ("h:1", {"n": [-(10**309)]}, ValueError),
        pytest.param("h:1", 10**5000, ValueError, id="more-digits-than-str-makes"),
    ],
)
def test_records_that_cannot_be_written_are_refused(
    addr: Any, metadata: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"pass|metadata|JSON|addr|surrogate"):
        encode_endpoint(addr, metadata)


def test_the_largest_ints_a_float64_holds_are_written_and_read_back() -> None:
    """Go reads every number of metadata as a float64: an int up to the largest one is written
    (and read back rounded, as Go reads it); one past it is refused above."""
    top = int(sys.float_info.max)
    for n in (2**53 + 1, top, -top):
        assert decode_endpoint(encode_endpoint("h:1", n)).metadata == float(n)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (b'{"Op":0,"Addr":"a:1","Metadata":null}', Endpoint("a:1")),
        (b'{"addr":"a:1","ADDR":"b:2","metadata":"m"}', Endpoint("b:2", "m")),  # last wins
        (b'{"Addr":"a:1","Addr":null}', Endpoint("a:1")),  # null leaves a string field
        (b'{"Addr":"a:1","Metadata":1,"Metadata":null}', Endpoint("a:1")),  # ... not an any
        (b'{"Op":1,"Addr":"a:1","Extra":[1,{"x":2}]}', Endpoint("a:1")),  # Op and unknowns
        (b'{"Op":255,"Addr":"a:1"}', Endpoint("a:1")),
        (b'{"Op":null,"op":7,"OP":0,"Addr":"a:1"}', Endpoint("a:1")),
        (b'{"Addr":"a:1","Metadata":{"k":{"x":1,"x":2}}}', Endpoint("a:1", {"k": {"x": 2}})),
        (b"{}", Endpoint("")),
        (b" null \n", Endpoint("")),  # Go unmarshals null into a struct without an error
        (b'{"Addr":"\xff:1","Metadata":"\\ud800"}', Endpoint("\ufffd:1", "\ufffd")),
        # one U+FFFD per byte of a broken sequence, as Go reads it (Python's own "replace"
        # puts one for the whole sequence)
        (b'{"Addr":"a\xe2\x82b:1"}', Endpoint("a\ufffd\ufffdb:1")),
        (b'{"Addr":"a:1","Metadata":"\xf0\x9f\x98"}', Endpoint("a:1", "\ufffd" * 3)),
        (
            b'{"Addr":"a:1","Metadata":"\xed\xa0\x80\xc3\xa9"}',
            Endpoint("a:1", "\ufffd" * 3 + "\xe9"),
        ),
        # an unknown field's value is not read, however long a number it holds
        (b'{"Addr":"a:1","Extra":' + b"9" * 5000 + b"}", Endpoint("a:1")),
        ('{"Addr":"a:1","Metadata":2.5}', Endpoint("a:1", 2.5)),
    ],
)
def test_records_are_read_as_go_unmarshals_them(value: str | bytes, want: Endpoint) -> None:
    assert decode_endpoint(value) == want


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"not json",
        b"[]",
        b'"a:1"',
        b'{"Op":256,"Addr":"a:1"}',
        b'{"Op":-1,"Addr":"a:1"}',
        b'{"Op":1.0,"Addr":"a:1"}',
        b'{"Op":"0","Addr":"a:1"}',
        # Op as Go's strconv.ParseUint(literal, 10, 64) reads a uint8: digits only, <= 255
        b'{"Op":-0,"Addr":"a:1"}',
        b'{"OP":-0,"Addr":"a:1"}',
        b'{"Op":0.0,"Addr":"a:1"}',
        b'{"Op":0e0,"Addr":"a:1"}',
        b'{"Op":1e2,"Addr":"a:1"}',
        b'{"Op":1E2,"Addr":"a:1"}',
        b'{"Op":+0,"Addr":"a:1"}',
        b'{"Op":00,"Addr":"a:1"}',
        b'{"Op":true,"Addr":"a:1"}',
        b'{"Op":[0],"Addr":"a:1"}',
        b'{"Op":18446744073709551616,"Addr":"a:1"}',
        b'{"Op":256,"Op":0,"Addr":"a:1"}',  # Go fails on any occurrence, not just the last
        b'{"Op":0,"op":-0,"Addr":"a:1"}',
        b'{"Addr":5}',
        b'{"Addr":"a:1","Metadata":1e400}',
        b'{"Addr":"a:1","Metadata":' + b"9" * 5000 + b"}",  # beyond a float64, as Go says
        b'{"Op":' + b"9" * 5000 + b',"Addr":"a:1"}',
        b'{"Addr":"a:1","Metadata":NaN}',
        b'{"Addr":"a:1"} trailing',
    ],
)
def test_records_go_refuses_are_refused(value: bytes) -> None:
    with pytest.raises(ValueError, match="not a valid endpoint record"):
        decode_endpoint(value)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(addr=st.text(min_size=1, max_size=20), metadata=JSON)
def test_what_we_write_reads_back_and_writes_the_same_bytes(addr: str, metadata: Any) -> None:
    text = encode_endpoint(addr, metadata)
    endpoint = decode_endpoint(text.encode())
    assert endpoint.addr == addr
    assert endpoint.metadata == metadata or isinstance(metadata, float | list | dict)
    assert endpoint.encode() == text  # (a float 5.6e16 reads back as the int Go writes)


@pytest.mark.parametrize(
    ("metadata", "held", "written_again"),
    [
        ("-0", -0.0, "-0"),  # Go's float64 keeps the sign (hypothesis found it: -0 read as 0)
        ("[-0,0,-0.0]", [-0.0, 0, -0.0], "[-0,0,-0]"),
        ("9007199254740992", 2**53, "9007199254740992"),
        ("-9007199254740992", -(2**53), "-9007199254740992"),
        ("9007199254740993", 9007199254740992.0, "9007199254740992"),  # rounded, as in Go
        ("123456789012345678901234", 1.2345678901234569e23, "1.2345678901234569e+23"),
    ],
)
def test_numbers_read_as_the_float64_go_holds(metadata: str, held: Any, written_again: str) -> None:
    endpoint = decode_endpoint(f'{{"Op":0,"Addr":"h:1","Metadata":{metadata}}}')
    assert endpoint.metadata == held
    assert repr(endpoint.metadata) == repr(held)  # -0.0, not 0; a float, not an int
    assert endpoint.encode() == f'{{"Op":0,"Addr":"h:1","Metadata":{written_again}}}'


def test_a_number_no_float64_holds_is_refused() -> None:
    with pytest.raises(ValueError, match="overflows a float64"):
        decode_endpoint('{"Op":0,"Addr":"h:1","Metadata":' + "9" * 400 + "}")


def nested(depth: int) -> str:
    """A record whose document nests *depth* levels (its own object is level 1)."""
    inner = depth - 1
    return '{"Op":0,"Addr":"deep:1","Metadata":' + "[" * inner + "]" * inner + "}"


def test_records_nest_up_to_max_depth() -> None:
    assert MAX_DEPTH == 256
    endpoint = decode_endpoint(nested(MAX_DEPTH))
    assert endpoint.encode() == nested(MAX_DEPTH)
    assert endpoint == decode_endpoint(nested(MAX_DEPTH).encode())
    assert repr(endpoint).startswith("Endpoint(addr='deep:1', metadata=[[[")
    brackets = "[{" * 5000  # brackets in strings do not nest
    record = f'{{"Addr":"{brackets}","Metadata":"{brackets}\\"]\\\\"}}'  # \" and \\ too
    assert decode_endpoint(record) == Endpoint(brackets, brackets + '"]\\')


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1_500, 10_000, 10_001, 100_000])
def test_records_nested_deeper_are_refused_never_a_recursion_error(depth: int) -> None:
    # Go reads up to 10,000 levels; Python's json raised RecursionError from about 1,000
    with pytest.raises(ValueError, match=f"not a valid endpoint record.*nested {depth} levels"):
        decode_endpoint(nested(depth))


def test_the_go_json_reader_turns_a_recursion_error_into_a_value_error() -> None:
    # the cluster records read up to Go's limit, deeper than Python's json recurses
    deep = '{"id":"a","data":' + "[" * 5_000 + "]" * 5_000 + "}"
    assert GO_MAX_DEPTH == 10_000
    with pytest.raises(ValueError, match="not a valid member record: nested too deeply"):
        loads_object(deep, "member record")
    with pytest.raises(ValueError, match="nested 10001 levels deep, more than 10000"):
        loads_object("[" * 10_001 + "]" * 10_001, "member record")


def test_metadata_nested_too_deeply_to_read_back_is_refused() -> None:
    metadata: Any = []
    for _ in range(MAX_DEPTH - 2):
        metadata = [metadata]
    assert decode_endpoint(encode_endpoint("h:1", metadata)).metadata == metadata  # 255 levels
    with pytest.raises(ValueError, match="metadata nested deeper than 255 levels"):
        encode_endpoint("h:1", {"k": metadata})
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="or cyclic"):
        encode_endpoint("h:1", cyclic)


# -- the manager on etcd ---------------------------------------------------------------------------


def test_bad_arguments_are_refused_before_any_io(etcd_sync: Client) -> None:
    with pytest.raises(TypeError, match="target must be a str"):
        etcd_sync.endpoint_manager(b"svc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target must not be empty"):
        etcd_sync.endpoint_manager("")
    eps = etcd_sync.endpoint_manager("svc")
    with pytest.raises(ValueError, match="must start with the target and a slash, 'svc/'"):
        eps.add("svc-v2/a", "a:1")
    with pytest.raises(ValueError, match="'svc/'"):
        eps.delete("svc")
    for lease, error in [
        (-1, ValueError),
        (2**63, ValueError),
        ("1", TypeError),
        (True, TypeError),
    ]:
        # a wrong value is a ValueError, a wrong type a TypeError, with put()'s message
        with pytest.raises(error, match=r"lease must be an int.* \(a lease id, 0 = none\)") as got:
            eps.add("svc/a", "a:1", lease=lease)  # type: ignore[arg-type]
        with pytest.raises(error) as put:
            etcd_sync.put("svc/a", "v", lease=lease)  # type: ignore[call-overload]
        assert str(got.value) == str(put.value)
    with pytest.raises(ValueError, match="addr must not be empty"):
        eps.register("")
    with pytest.raises(TypeError, match="metadata must be JSON"):
        eps.register("a:1", metadata={1, 2})
    assert eps.key_for("10.0.0.1:80") == "svc/10.0.0.1:80"
    assert repr(eps) == "<SyncEndpointManager target='svc'>"


async def test_add_list_delete(etcd: AsyncClient, etcd_prefix: str) -> None:
    target = etcd_prefix + "svc"
    eps = etcd.endpoint_manager(target)
    assert isinstance(eps, EndpointManager)
    assert await eps.list() == {}
    rev = await eps.add(f"{target}/a", "10.0.0.1:80", "zone-a")
    assert rev > 0
    await eps.add(f"{target}/b", "10.0.0.2:80")
    kv = await etcd.get(f"{target}/a")
    assert kv is not None
    assert kv.value == b'{"Op":0,"Addr":"10.0.0.1:80","Metadata":"zone-a"}'
    # the records of other writers: Go's, another target's, and some no Go client decodes
    await etcd.put(f"{target}/go", '{"Op":0,"Addr":"10.0.0.3:80","Metadata":null}')
    await etcd.put(f"{target}-v2/x", encode_endpoint("10.9.9.9:80"))
    await etcd.put(f"{target}/bad", "not json")
    await etcd.put(f"{target}/bad-op", '{"Op":300,"Addr":"10.0.0.4:80"}')
    assert await eps.list() == {
        f"{target}/a": Endpoint("10.0.0.1:80", "zone-a"),
        f"{target}/b": Endpoint("10.0.0.2:80"),
        f"{target}/go": Endpoint("10.0.0.3:80"),
    }
    assert eps.skipped == 2
    assert await eps.delete(f"{target}/a") is True
    assert await eps.delete(f"{target}/a") is False
    assert f"{target}/a" not in await eps.list()


async def test_records_go_skips_are_skipped_by_list_and_watch(
    etcd: AsyncClient, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # one record nested 1,500 deep made list() raise RecursionError; "Op":-0 was read as 0
    target = etcd_prefix + "svc"
    eps = etcd.endpoint_manager(target)
    await eps.add(f"{target}/ok", "10.0.0.1:80")
    await etcd.put(f"{target}/deep", nested(1_500))
    await etcd.put(f"{target}/deeper", nested(10_001))
    await etcd.put(f"{target}/neg0", '{"Op":-0,"Addr":"10.0.0.2:80"}')
    with caplog.at_level(logging.WARNING):
        assert await eps.list() == {f"{target}/ok": Endpoint("10.0.0.1:80")}
        assert eps.skipped == 3
        async with eps.watch() as w:
            view = await w.synced(timeout=WAIT)
            assert dict(view.tree) == {f"{target}/ok": Endpoint("10.0.0.1:80")}
            assert w.stats.invalid_records == 3
            await etcd.put(f"{target}/deep2", nested(2_000))
            await etcd.put(f"{target}/op", '{"Op":1e0,"Addr":"10.0.0.3:80"}')
            await eps.add(f"{target}/last", "10.0.0.4:80")
            async with asyncio.timeout(WAIT):
                async for view in w:
                    if f"{target}/last" in view.tree:
                        break
            assert set(view.tree) == {f"{target}/ok", f"{target}/last"}
            assert w.stats.invalid_records == 5
    assert "RecursionError" not in caplog.text
    assert "nested 1500 levels deep" in caplog.text


async def test_add_under_a_lease(etcd: AsyncClient, etcd_prefix: str) -> None:
    target = etcd_prefix + "svc"
    eps = etcd.endpoint_manager(target)
    lease = await etcd.grant(30)
    await eps.add(f"{target}/a", "10.0.0.1:80", lease=lease.id)
    kv = await etcd.get(f"{target}/a")
    assert kv is not None
    assert kv.lease == lease.id
    await etcd.revoke(lease.id)
    assert await eps.list() == {}


async def test_watch_gives_exact_views_with_their_changes(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    target = etcd_prefix + "svc"
    eps = etcd.endpoint_manager(target)
    await eps.add(f"{target}/a", "10.0.0.1:80")
    async with eps.watch() as w:
        view = await w.synced(timeout=WAIT)
        assert dict(view.tree) == {f"{target}/a": Endpoint("10.0.0.1:80")}
        await eps.add(f"{target}/b", "10.0.0.2:80", "m")
        await etcd.put(f"{target}/bad", "{")
        await eps.delete(f"{target}/a")
        seen: dict[str, ChangeKind] = {}
        async with asyncio.timeout(WAIT):
            async for view in w:
                seen.update({k: c.kind for k, c in view.changes.items()})
                if f"{target}/a" not in view.tree:
                    break
        assert dict(view.tree) == {f"{target}/b": Endpoint("10.0.0.2:80", "m")}
        assert seen == {f"{target}/b": ChangeKind.ADDED, f"{target}/a": ChangeKind.REMOVED}
        assert w.stats.invalid_records == 1


async def test_register_keeps_the_endpoint_and_removes_it_on_exit(
    etcd: AsyncClient, etcd_prefix: str
) -> None:
    target = etcd_prefix + "svc"
    eps = etcd.endpoint_manager(target)
    key = f"{target}/10.0.0.7:8080"
    async with eps.register("10.0.0.7:8080", "v1", ttl=5) as reg:
        await reg.registered(timeout=WAIT)
        assert reg.state is LeaseState.REGISTERED
        assert await eps.list() == {key: Endpoint("10.0.0.7:8080", "v1")}
        await etcd.delete(key)  # an outside delete: it comes back
        async with asyncio.timeout(WAIT):
            while key not in await eps.list():
                await asyncio.sleep(0.01)
    assert await eps.list() == {}


@pytest.mark.parametrize("metadata", [{"weight": 2}, [1], 7, 2.5, True])
async def test_metadata_that_is_not_a_string_is_warned_once(
    etcd: AsyncClient, etcd_prefix: str, caplog: pytest.LogCaptureFixture, metadata: Any
) -> None:
    # Issue 24: "log once, when metadata is not a string or null" (a map or a list crashes Go
    # clients; a number or a bool is no string to Go code reading it).
    target = etcd_prefix + "svc"
    eps = etcd.endpoint_manager(target)
    with caplog.at_level(logging.WARNING, logger="etcdkit.naming"):
        await eps.add(f"{target}/a", "a:1", "plain")
        await eps.add(f"{target}/none", "z:1", None)
        assert "19700" not in caplog.text
        await eps.add(f"{target}/b", "b:1", metadata)
        await eps.add(f"{target}/c", "c:1", metadata)
        await eps.add(f"{target}/d", "d:1", {"other": 1})
    warnings = [r for r in caplog.records if "19700" in r.getMessage()]
    assert len(warnings) == 1
    assert type(metadata).__name__ in warnings[0].getMessage()
    assert (await eps.list())[f"{target}/b"] == Endpoint("b:1", metadata)


def test_the_threaded_face(etcd_sync: Client, etcd_prefix: str, no_leaked_threads: None) -> None:
    target = etcd_prefix + "svc"
    eps = etcd_sync.endpoint_manager(target)
    assert isinstance(eps, SyncEndpointManager)
    assert eps.target == target
    assert eps.prefix == target + "/"
    eps.add(f"{target}/a", "10.0.0.1:80")
    with eps.watch() as w:
        view = w.synced(timeout=WAIT)
        assert dict(view.tree) == {f"{target}/a": Endpoint("10.0.0.1:80")}
        with eps.register("10.0.0.2:80", ttl=5) as reg:
            reg.registered(timeout=WAIT)
            for view in w:
                if len(view.tree) == 2:
                    break
            assert view.tree[f"{target}/10.0.0.2:80"] == Endpoint("10.0.0.2:80")
        assert eps.delete(f"{target}/a")
        for view in w:
            if not view.tree:
                break
    assert eps.list() == {}
    assert eps.skipped == 0


@pytest.mark.parametrize("leaves", ["new", "old"])
async def test_two_registrations_of_one_address_do_not_contest_it(
    etcd_server: EtcdServer, etcd_prefix: str, leaves: str
) -> None:
    """An old and a new process overlapping on one host:port (a rolling restart) each put
    their record back over the other's, at backoff pace, for as long as both were open, and
    when the one holding the key left, the address was gone for up to ~2 s. Now the last one
    registered keeps it, as with Go's endpoints.Manager; the other stands by and puts its own
    back at once when the key goes."""
    target = etcd_prefix + "roll"
    key = f"{target}/10.9.9.9:9"
    async with (
        AsyncClient(etcd_server.endpoint) as old_client,
        AsyncClient(etcd_server.endpoint) as new_client,
        AsyncClient(etcd_server.endpoint) as probe,
    ):
        old = await old_client.endpoint_manager(target).register("10.9.9.9:9", "v1", 3).__aenter__()
        await old.registered(timeout=WAIT)
        # (made in a running loop, a registration starts at once: the new one once the old is in)
        new = await new_client.endpoint_manager(target).register("10.9.9.9:9", "v2", 3).__aenter__()
        await new.registered(timeout=WAIT)
        rev = (await probe.get(key)).mod_revision  # type: ignore[union-attr]
        await asyncio.sleep(2.5)  # (a contest rewrote the key every 0.5-2 s)
        kv = await probe.get(key)
        assert kv is not None
        assert (kv.mod_revision, decode_endpoint(kv.value).metadata) == (rev, "v2")
        assert (old.state, new.state) == (LeaseState.LOST, LeaseState.REGISTERED)
        if leaves == "new":
            await new.aclose()
            async with asyncio.timeout(0.5):  # at once, not at backoff pace
                await old.registered()
            kv = await probe.get(key)
            assert kv is not None
            assert decode_endpoint(kv.value).metadata == "v1"
            await old.aclose()
        else:
            await old.aclose()  # standing by: its close leaves the holder's key alone
            kv = await probe.get(key)
            assert kv is not None
            assert kv.mod_revision == rev
            assert new.state is LeaseState.REGISTERED
            await new.aclose()
        assert await probe.get(key) is None


def test_yield_to_must_be_a_function(etcd_sync: Client) -> None:
    with pytest.raises(TypeError, match="yield_to"):
        PersistentLease(etcd_sync.aio, "/k", "v", yield_to="addr")  # type: ignore[arg-type]
