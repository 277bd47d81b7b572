"""The recent-keys courtesy: retries and repeats within a batch are told apart from new keys."""

from __future__ import annotations

from driftline.ingest.recent import RecentKeys


def test_new_keys_repeats_and_retries() -> None:
    recent = RecentKeys(per_generation=4)
    assert recent.seen(["a", "b", "c"]).tolist() == [False, False, False]
    assert recent.seen(["a", "b", "a"]).tolist() == [False, False, True]
    recent.add(["a", "b", "c"])
    assert recent.seen(["d", "b", "e", "d"]).tolist() == [False, True, False, True]


def test_two_generations_are_kept_then_forgotten() -> None:
    recent = RecentKeys(per_generation=2)
    recent.add(["a", "b", "c"])  # over the limit: becomes the previous generation
    assert recent.seen(["a", "x"]).tolist() == [True, False]
    recent.add(["x", "y", "z"])  # another rollover: "a" is forgotten
    assert recent.seen(["a", "x"]).tolist() == [False, True]
