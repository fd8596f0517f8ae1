"""The persistent map under snapshot trees: a frozen dict base plus a HAMT overlay."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from etcdkit import _pmap
from etcdkit._pmap import PMap

OPS = st.lists(
    st.tuples(st.sampled_from(["set", "swap", "del", "finish"]), st.integers(0, 40), st.integers()),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(initial=st.dictionaries(st.integers(0, 40), st.integers(), max_size=30), ops=OPS)
def test_every_version_equals_its_model(
    initial: dict[int, int], ops: list[tuple[str, int, int]]
) -> None:
    old_fold = _pmap.FOLD_MIN
    _pmap.FOLD_MIN = 4  # fold often, so folding is exercised
    try:
        versions: list[tuple[PMap[int, int], dict[int, int]]] = []
        current = PMap.from_dict(dict(initial))
        model = dict(initial)
        m = current.mutate()
        for op, k, v in ops:
            if op == "set":
                m[k] = v
                model[k] = v
            elif op == "swap":
                assert m.swap(k, v, "none") == model.get(k, "none")
                model[k] = v
            elif op == "del" and k in model:
                del m[k]
                del model[k]
            elif op == "finish":
                current = m.finish()
                versions.append((current, dict(model)))
                m = current.mutate()
            assert m.get(k) == model.get(k)
            assert (k in m) == (k in model)
        versions.append((m.finish(), dict(model)))
        for pm, expected in versions:  # old versions are untouched by later changes
            assert len(pm) == len(expected)
            assert dict(pm.items()) == expected
            assert sorted(pm) == sorted(expected)
            assert pm == expected
            for k in range(41):
                assert pm.get(k, "none") == expected.get(k, "none")
                assert (k in pm) == (k in expected)
    finally:
        _pmap.FOLD_MIN = old_fold


def test_the_base_is_shared_and_folded_when_the_overlay_grows() -> None:
    base = {i: i for i in range(10_000)}
    pm = PMap.from_dict(base)
    m = pm.mutate()
    for i in range(100):
        m[i] = -i
    small = m.finish()
    assert small._base is base  # a few changes: the base is shared
    m = small.mutate()
    for i in range(6_000):
        del m[i]
    folded = m.finish()
    assert folded._base is not base  # past half the base: folded into a new one
    assert len(folded._over) == 0
    assert len(folded) == 4_000
    assert dict(small.items())[5] == -5  # the older version still reads as it was
    assert base == {i: i for i in range(10_000)}
