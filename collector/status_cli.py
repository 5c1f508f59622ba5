"""``backhaul-collector status``: the fleet summary, read from the running collector's ``/healthz``
and ``/api/v1/fleet`` (with a ``[read]`` token: ``--token`` or ``$BACKHAUL_READ_TOKEN``)."""

from __future__ import annotations

import os
import sys
from typing import Any

from backhaul import statuscmd as sc

DEFAULT_PORT = 9300
# The flags of collector/fleet_ops.py, in the order the summary lists them.
FLAGS = (
    ("offline", "offline"),
    ("behind", "behind"),
    ("over_budget", "over budget"),
    ("skewed", "clock skewed"),
    ("crash_looping", "crash-looping"),
    ("drift", "version drift"),
)


def render(d: dict[str, Any]) -> str:
    health, fleet = d["health"], d["fleet"]
    devices = fleet["devices"]
    online = sum(1 for x in devices if x["online"])
    never = sum(1 for x in devices if x["last_seen_ms"] is None)
    lines = [
        f"backhaul-collector: {health['status']}  ({len(devices)} devices: {online} online, "
        f"{len(devices) - online - never} offline, {never} never seen)"
    ]
    for name, why in (health.get("dead") or {}).items():
        lines.append(f"  DEAD       {name}: {why}")
    for name, f in (health.get("forward") or {}).items():
        lines.append(
            f"forward     {name}: {f['queued_samples']} samples queued, last error {sc.na(f.get('last_error'))}"
        )
    lines.append(
        f"versions    agent {fleet.get('common_agent_version') or 'n/a'}; models "
        + (", ".join(f"{k} {v}" for k, v in sorted((fleet.get("common_model_versions") or {}).items())) or "n/a")
    )
    for key, label in FLAGS:
        flagged = sorted(x["device"] for x in devices if (x.get("flags") or {}).get(key))
        shown = ", ".join(flagged[:8]) + (f" (+{len(flagged) - 8})" if len(flagged) > 8 else "")
        lines.append(f"{label + ':':<15}{len(flagged):>4}  {shown}".rstrip())
    worst = sorted((x for x in devices if x.get("backlog_age_s")), key=lambda x: -x["backlog_age_s"])[:5]
    if worst:
        lines.append("furthest behind:")
        for x in worst:
            lines.append(
                f"  {x['device']:<24} oldest unsent {sc.duration(x['backlog_age_s']):>8}, "
                f"backlog {sc.size(x['backlog_bytes'])}, clock offset "
                + (f"{x['clock_offset_s']:+.1f} s" if x.get("clock_offset_s") is not None else "n/a")
            )
    return "\n".join(lines)


def main(prog: str, argv: list[str]) -> int:
    args = sc.parser(prog, DEFAULT_PORT, token=True).parse_args(argv)
    token = args.token or os.environ.get("BACKHAUL_READ_TOKEN")
    try:
        base = sc.base_url(args.config, args.url, DEFAULT_PORT)
    except sc.Unreachable as exc:
        print(f"{prog} status: {exc}", file=sys.stderr)
        return sc.EXIT_UNREACHABLE

    def read() -> dict[str, Any]:
        health = sc.fetch(f"{base}/healthz")
        try:
            fleet = sc.fetch(f"{base}/api/v1/fleet", token)
        except sc.Unreachable as exc:
            if token or "HTTP 401" not in str(exc):
                raise
            # Open fleets ([read] auth = "none") need none; this one does.
            raise sc.Unreachable(f"{exc}: the fleet needs a [read] token (--token or $BACKHAUL_READ_TOKEN)") from exc
        return {"health": health, "fleet": fleet}

    return sc.run(prog, args, read, render)
