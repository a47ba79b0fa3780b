"""Inputs for property tests: random bytes, and valid documents with random damage."""

from __future__ import annotations

import os

from hypothesis import strategies as st

#: Examples per property test; ``GUESTPULL_FUZZ_EXAMPLES`` raises it for a long run.
EXAMPLES = int(os.environ.get("GUESTPULL_FUZZ_EXAMPLES", "400"))

#: Tokens that mean something to TOML, JSON or tar readers, spliced in at random places.
_TOKENS = [b'"', b"\'\'\'", b"[", b"]]", b"=", b"\n[[x]]\n", b"\\u0000", b"\xff", b"{", b"}",
           b"1e999", b"-", b"true", b"\n", b"#", b"\r", b"\x00" * 8, b"\x80", b"/", b"..",
           b"7777777", b" 30 path=", b"GNU.sparse."]


@st.composite
def mutated(draw: st.DrawFn, valid: bytes, *, max_edits: int = 8) -> bytes:
    """``valid`` with up to ``max_edits`` random byte flips, insertions, deletions, splices."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, max_edits))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        else:
            data[at:at] = draw(st.sampled_from(_TOKENS))
    return bytes(data)
