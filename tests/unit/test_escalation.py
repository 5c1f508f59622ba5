"""The fleet page's escalation share: counter increases across agent restarts."""

from __future__ import annotations

from collections import Counter

from collector.escalation import Escalation, increase


def test_increase_counts_from_the_baseline_and_through_resets() -> None:
    assert increase([5, 7, 9], baseline=5) == 4
    assert increase([3, 4], baseline=None) == 4  # a series that started inside the window counts from zero
    assert increase([8, 2, 5], baseline=6) == 2 + 2 + 3  # 8 after 6, restart to 2, then 5


def test_share_and_main_reason() -> None:
    e = Escalation(Counter({"local": 6, "cloud": 4}), Counter({"down": 3, "too_long": 1}))
    assert e.share == 0.4 and e.main_reason == "down"
    assert Escalation().share is None and Escalation().main_reason is None
