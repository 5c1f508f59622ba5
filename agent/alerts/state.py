"""The alert state machine: inactive -> pending -> firing -> resolved, de-duplicated, with repeats.

Only changes leave the device: an instance's first ``firing``, a repeat every ``repeat_interval``
while it stays firing, and its ``resolved``. ``pending`` (the condition holds, ``for`` has not yet
passed) is kept here. An instance that disappears from the results (its series went stale) resolves.
Instances that were firing when the agent stopped are restored at start and kept for a grace period,
so that they either carry on or resolve — never stay firing at the collector forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.alerts.rules import Result


@dataclass(frozen=True)
class Transition:
    """An alert message to send: ``state`` is ``firing`` or ``resolved``."""

    result: Result
    state: str
    value: float
    ts_ms: int
    repeat: bool = False


@dataclass
class _Instance:
    result: Result
    state: str = "inactive"  # inactive, pending or firing
    since_ms: int = 0
    last_sent_ms: int = 0
    grace_until_ms: int = 0
    value: float = field(default=float("nan"))


class Tracker:
    """Args: repeat_interval_ms: how often a still-firing alert is sent again."""

    def __init__(self, repeat_interval_ms: int) -> None:
        self._repeat_ms = repeat_interval_ms
        self._instances: dict[tuple[str, int], _Instance] = {}

    def restore(self, firing: list[Result], now_ms: int, grace_ms: int) -> None:
        """Instances that were firing when the agent last stopped."""
        for result in firing:
            self._instances[(result.name, result.fingerprint)] = _Instance(
                result, "firing", now_ms, now_ms, now_ms + grace_ms
            )

    def firing(self) -> list[Result]:
        return [i.result for i in self._instances.values() if i.state == "firing"]

    def next_due_ms(self) -> int | None:
        """When the earliest pending instance's ``for`` runs out, if any is pending."""
        due = [i.since_ms + i.result.for_ms for i in self._instances.values() if i.state == "pending"]
        return min(due) if due else None

    def states(self) -> dict[tuple[str, int], str]:
        return {key: i.state for key, i in self._instances.items()}

    def step(self, results: list[Result], now_ms: int) -> list[Transition]:
        """Feed one evaluation; returns the messages it causes."""
        out: list[Transition] = []
        seen: set[tuple[str, int]] = set()
        for r in results:
            key = (r.name, r.fingerprint)
            seen.add(key)
            inst = self._instances.get(key)
            if not r.active:
                if inst is not None:
                    if inst.state == "firing":
                        out.append(Transition(inst.result, "resolved", r.value, now_ms))
                    del self._instances[key]
                continue
            if inst is None:
                inst = self._instances[key] = _Instance(r, "pending", now_ms)
            inst.result, inst.value, inst.grace_until_ms = r, r.value, 0
            if inst.state == "pending" and now_ms - inst.since_ms >= r.for_ms:
                inst.state, inst.last_sent_ms = "firing", now_ms
                out.append(Transition(r, "firing", r.value, now_ms))
            elif inst.state == "firing" and now_ms - inst.last_sent_ms >= self._repeat_ms:
                inst.last_sent_ms = now_ms
                out.append(Transition(r, "firing", r.value, now_ms, repeat=True))
        for key in [k for k in self._instances if k not in seen]:
            inst = self._instances[key]
            if inst.grace_until_ms > now_ms:
                continue
            if inst.state == "firing":
                out.append(Transition(inst.result, "resolved", float("nan"), now_ms))
            del self._instances[key]
        return out
