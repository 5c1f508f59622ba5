"""``backhaul-agent status``: the running agent's state, read from its local ``/api/v1/status``."""

from __future__ import annotations

import sys
from typing import Any

from backhaul import statuscmd as sc

DEFAULT_PORT = 9201


def render(d: dict[str, Any]) -> str:
    """The status as an operator reads it; a part the agent does not have is "n/a"."""
    lines = [
        f"backhaul-agent {d['device']}: {d['status']}  (version {d['version']}, pid {d['pid']}, "
        f"up {sc.duration(d['uptime_s'])})"
    ]
    for name, why in (d.get("dead") or {}).items():
        lines.append(f"  DEAD       {name}: {why}")
    b = d["buffer"]
    lines.append(
        f"buffer      {sc.size(b['bytes'])} of {sc.size(b['budget_bytes'])}  {sc.bar(b['used_share'])}"
        f"  {b['samples']} samples"
    )
    oldest = b["oldest_unsent_ms"]
    age = sc.duration(b["oldest_unsent_age_s"])
    lines.append("oldest      " + (f"unsent sample {age} old ({sc.when(oldest / 1000)})" if oldest else "none"))
    lines.extend(_uplink(d.get("uplink")))
    a = d.get("alerts")
    if a is None:
        lines.append("alerts      n/a (alerts disabled)")
    else:
        active = ", ".join(a.get("active") or []) or "none"
        lines.append(f"alerts      queue {a['queued']}, active: {active}, last error: {sc.na(a.get('last_error'))}")
    inf = d.get("inference")
    if inf is None:
        lines.append("inference   n/a (no supervised inference server)")
    else:
        lines.append(
            f"inference   {inf['state']}, {'up' if inf['up'] else 'down'}, pid {sc.na(inf.get('pid'))}, "
            f"restarts {inf['restarts']}, crash loop: {'YES' if inf['crash_loop'] else 'no'}, "
            f"last exit {sc.na(inf.get('last_exit'))}"
        )
    lines.append(_clock(d.get("clock") or {}))
    c = d["config"]
    state = "ok" if c["last_reload_successful"] else f"REFUSED ({c['error']})"
    reloaded = f"last reload {state} at {sc.when(c['last_reload_at'])}" if c["last_reload_at"] else "not reloaded"
    lines.append(
        f"config      {reloaded}; in force since {sc.when(c['last_success_at'])}"
        + (f"; needs a restart: {', '.join(c['needs_restart'])}" if c["needs_restart"] else "")
    )
    for url, error in (d.get("scrape_errors") or {}).items():
        lines.append(f"scrape      {url}: {error}")
    return "\n".join(lines)


def _uplink(u: dict[str, Any] | None) -> list[str]:
    if u is None:
        return ["uplink      n/a (no uplink.url)"]
    last = u.get("last_success_at")
    out = [
        f"uplink      {u['url']} ({u['protocol']}), last acknowledged {sc.when(last)}"
        + (f", last error: {u['last_error']}" if u.get("last_error") else "")
    ]
    rate = u.get("upload_rate_bytes_per_s")
    out.append(
        f"  rate      {sc.size(rate)}/s over the last minute" if rate is not None else "  rate      n/a (measuring)"
    )
    out.append(f"  drain     {sc.bar(u.get('drain_progress'))}  eta {sc.duration(u.get('drain_eta_s'))}")
    for link in u.get("links") or []:
        mark = "*" if link["in_use"] else " "
        why = "in use" if link["in_use"] and not link.get("why_not") else f"not used: {link.get('why_not')}"
        if not link.get("metered"):
            out.append(f"  link    {mark} {link['name']}: {why}; budget n/a (unmetered), next window n/a")
            continue
        day = _spent(link.get("spent_day"), link.get("budget_day"))
        month = _spent(link.get("spent_month"), link.get("budget_month"))
        window = link.get("next_window_ms") or 0
        out.append(
            f"  link    {mark} {link['name']}: {why}; today {day}, this month {month}, next window "
            + (sc.when(window / 1000) if window else "n/a (open or none)")
        )
    return out


def _spent(spent: int | None, budget: int | None) -> str:
    if spent is None:
        return "n/a"
    return f"{sc.size(spent)} of {sc.size(budget)}" if budget else f"{sc.size(spent)} (no budget)"


def _clock(c: dict[str, Any]) -> str:
    skew = c.get("skew_s")
    offset = c.get("offset_s")
    jump = c.get("last_jump")
    if isinstance(jump, dict):  # the clock keeper's: how far, to when (docs/clock.md)
        jumped = f"{jump.get('seconds', 0):+.0f} s to {jump.get('to')}"
    else:
        jumped = "none" if "jumps" in c else "n/a"
    parts = [
        f"skew vs collector {skew:+.1f} s" if isinstance(skew, int | float) else "skew n/a",
        f"offset {offset:+.3f} s" if isinstance(offset, int | float) else "offset n/a",
        f"last jump {jumped}",
        f"corrected samples {sc.na(c.get('corrected_samples'))}",
    ]
    if c.get("held_samples"):
        parts.append(f"held samples {c['held_samples']}")
    trusted = c.get("trusted")
    if trusted is not None:
        parts.insert(0, f"trusted ({c.get('state')})" if trusted else f"NOT TRUSTED ({c.get('state')})")
    return "clock       " + ", ".join(parts)


def main(prog: str, argv: list[str]) -> int:
    args = sc.parser(prog, DEFAULT_PORT).parse_args(argv)
    try:
        base = sc.base_url(args.config, args.url, DEFAULT_PORT)
    except sc.Unreachable as exc:
        print(f"{prog} status: {exc}", file=sys.stderr)
        return sc.EXIT_UNREACHABLE
    return sc.run(prog, args, lambda: sc.fetch(f"{base}/api/v1/status"), render)
