"""The applier's set of this layer's paths agrees with the obvious set of tuples, whatever
order the entries come in (it reuses the last parent's chain of ids when it can)."""

from __future__ import annotations

import random

from guestpull.image.unpack import _PathSet


def test_pathset_matches_a_set_of_every_prefix() -> None:
    rng = random.Random(15)
    names = ["a", "b", "c", "d"]
    added: list[tuple[str, ...]] = []
    for _ in range(3000):
        if added and rng.random() < 0.6:  # near the last path: a child, a sibling, an ancestor
            base = added[-1][: rng.randrange(len(added[-1]) + 1)]
        else:
            base = ()
        added.append(base + tuple(rng.choice(names) for _ in range(rng.randrange(1, 4))))
    paths = _PathSet()
    expected: set[tuple[str, ...]] = set()
    for parts in added:
        paths.add(parts)
        expected.update(parts[: i + 1] for i in range(len(parts)))
    probes = expected | {p + (n,) for p in list(expected)[:500] for n in names + ["x"]}
    assert {p for p in probes if p in paths} == expected
    assert () not in paths
