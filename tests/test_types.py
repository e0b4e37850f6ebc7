"""Match.ranked, the stores' fast constructor, builds exactly what the keyword constructor builds."""

from __future__ import annotations

import dataclasses

import pytest

from id2_plugin.types import Match


def test_ranked_match_is_the_keyword_constructors_match() -> None:
    fast = Match.ranked("17", "ref:17", 0.8125, 2, "ab" * 32, ("csam-hash-list",))
    slow = Match(reference_id="17", uri="ref:17", score=0.8125, rank=2, sha256="ab" * 32, labels=("csam-hash-list",))
    assert fast == slow and hash(fast) == hash(slow) and fast.to_dict() == slow.to_dict()
    assert fast.signals == () and fast.orientation == "" and fast.window == ""  # the defaults are filled in
    assert dataclasses.replace(fast, window="r0c1").window == "r0c1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.score = 1.0  # type: ignore[misc]
