"""Reading a Prometheus text exposition page (``/metrics``) of any process: ours, Prometheus, vmagent."""

from __future__ import annotations

from harness.config import READ_HEADERS
from harness.net import http


def parse_metrics(text: str) -> dict[str, float]:
    """A page as ``{'name{labels}': value}`` (comments and timestamps left out)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        # name{labels} value [timestamp]; a label value may hold spaces, so split after the labels
        brace = line.rfind("}")
        end = brace + 1 if brace >= 0 else line.find(" ")
        fields = line[end:].split() if end > 0 else []
        try:
            out[line[:end]] = float(fields[0])
        except (IndexError, ValueError):  # a line this reader does not understand
            continue
    return out


def read_metrics(url: str, timeout: float = 10) -> dict[str, float]:
    """``{url}/metrics``, parsed; raises :class:`OSError` when the process does not answer. It sends
    the harness's read token, which a collector requires and every other program ignores."""
    status, body, _ = http("GET", f"{url}/metrics", headers=READ_HEADERS, timeout=timeout)
    if status != 200:
        raise OSError(f"{url}/metrics answered {status}")
    return parse_metrics(body.decode())


def metric_value(url: str, name: str, labels: str = "") -> float:
    """One series from ``{url}/metrics``, named with its labels exactly as exposed (0 when absent)."""
    return read_metrics(url).get(name + (f"{{{labels}}}" if labels else ""), 0.0)


def metric_sum(page: dict[str, float], name: str) -> float:
    """The sum of every series of ``name`` on a parsed page, whatever its labels."""
    return sum(v for key, v in page.items() if key == name or key.startswith(name + "{"))
