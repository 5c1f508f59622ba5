"""The routing decision: serve a request locally, escalate it to the cloud now, or keep the option for later.

Inputs: the request (method, path, ``X-Backhaul-Route``, its JSON body), the local server's state (the
supervisor's reason it cannot serve, requests in flight locally), ``[proxy.cloud]`` and the link.

- A request is **private** when it says ``X-Backhaul-Route: local-only``, or when it matches
  ``private_routes`` or ``private_by_default`` is set and it did not opt in with ``allow-cloud``
  (or ``cloud``). A private request never leaves the device.
- **Now** (before anything is sent): ``requested`` (``X-Backhaul-Route: cloud``), then the enabled
  triggers ``down``, ``too_long`` and ``overloaded``, in that order; the first that applies is the reason.
- **Later** (while the local server is tried, before a byte reached the client): ``slow_start`` and
  ``error``, armed in the :class:`Plan` and checked again against privacy and the link when they fire.
- An escalation is refused for ``private``, ``no_cloud`` (no ``proxy.cloud.url``) or the link's reason
  (``respect_budget``: ``budget``, ``window``, ...). Refused, the request gets the local answer, or a
  503 saying why when the local server cannot answer.

Only ``POST`` to the generating OpenAI routes can be escalated; everything else is served locally.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.proxy.link import LinkGate
from agent.proxy.settings import CloudSettings
from backhaul.errors import InputError

ROUTE_HEADER = "X-Backhaul-Route"
ROUTED_HEADER = "X-Backhaul-Routed"
ESCALATABLE = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"})
ROUTE_VALUES = frozenset({"local-only", "allow-cloud", "cloud"})
# About four characters per token for English text under the common BPE vocabularies.
CHARS_PER_TOKEN = 4


class RouteHeaderError(InputError):
    """``X-Backhaul-Route`` has a value the proxy does not know (answered 400: guessing could leak data)."""


def route_header(value: str | None) -> str | None:
    """The normalised ``X-Backhaul-Route`` value (None when absent)."""
    if value is None:
        return None
    normal = value.strip().lower()
    if normal not in ROUTE_VALUES:
        raise RouteHeaderError(f"{ROUTE_HEADER}: {value!r} is not one of {', '.join(sorted(ROUTE_VALUES))}")
    return normal


def _text_chars(value: Any, depth: int = 0) -> int:
    """Characters of text in an OpenAI prompt, messages or input (strings, lists, content parts)."""
    if isinstance(value, str):
        return len(value)
    if depth > 4:
        return 0
    if isinstance(value, list):
        return sum(_text_chars(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return _text_chars(value.get("content"), depth + 1) + _text_chars(value.get("text"), depth + 1)
    return 0


def estimated_prompt_tokens(body: dict[str, Any]) -> int:
    """Characters of the prompt / 4, rounded up (chat messages, completion prompt, responses/embeddings input)."""
    chars = sum(_text_chars(body.get(key)) for key in ("messages", "prompt", "input"))
    return math.ceil(chars / CHARS_PER_TOKEN)


class Body:
    """A request body held whole, its JSON parsed on first use (only some decisions need it).

    Args:
        raw: the body's bytes.
    """

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._parsed: dict[str, Any] | None = None
        self._tried = False

    def json(self) -> dict[str, Any] | None:
        if not self._tried:
            self._tried = True
            try:
                parsed = json.loads(self.raw)
            except (ValueError, RecursionError):  # RecursionError: absurdly nested input
                parsed = None
            self._parsed = parsed if isinstance(parsed, dict) else None
        return self._parsed


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one request.

    ``cloud``: escalate now, for ``reason``. Otherwise the local server is tried: ``late`` names the
    triggers still armed (``slow_start``, ``error``; asked again when they fire, so a private request
    is refused then); ``refused``/``wanted`` say which escalation was refused and why; ``unavailable``
    is the supervisor's reason when the local server cannot serve (then it is not tried: a 503).
    """

    cloud: bool
    reason: str = "none"
    private: bool = False
    late: frozenset[str] = frozenset()
    refused: str | None = None
    wanted: str | None = None
    unavailable: str | None = None


LOCAL = Plan(cloud=False)


class Router:
    """Decides each request's route.

    Args:
        cloud: the ``[proxy.cloud]`` section.
        local_down: why the local server cannot serve now (None: it can), e.g. the supervisor's;
            None when nothing supervises it (then ``down`` never applies; ``error`` still does).
        link: the link escalated traffic goes over; asked only when ``respect_budget`` is set.
    """

    def __init__(
        self, cloud: CloudSettings, local_down: Callable[[], str | None] | None, link: LinkGate | None
    ) -> None:
        self.cloud = cloud
        self.enabled = cloud.enabled
        self.triggers = frozenset(cloud.escalate_on)
        self._local_down = local_down
        self._link = link if cloud.respect_budget else None
        self._late = self.triggers & {"slow_start", "error"}

    def is_private(self, path: str, header: str | None) -> bool:
        if header == "local-only":
            return True
        if header in ("allow-cloud", "cloud"):
            return False
        c = self.cloud
        return c.private_by_default or any(fnmatch.fnmatchcase(path, p) for p in c.private_routes)

    def refusal(self, private: bool) -> str | None:
        """Why a request may not go to the cloud now (None: it may)."""
        if private:
            return "private"
        if not self.enabled:
            return "no_cloud"
        return self._link.blocked() if self._link is not None else None

    def plan(self, method: str, path: str, header: str | None, body: Body | None, local_in_flight: int) -> Plan:
        if not self.enabled and header != "cloud":
            return LOCAL  # no cloud: today's proxy, nothing to decide
        if method != "POST" or path not in ESCALATABLE or body is None:
            return LOCAL
        private = self.is_private(path, header)
        down = self._local_down() if self._local_down is not None and self.enabled else None
        wanted = self._wanted_now(header, down, body, local_in_flight)
        if wanted is None and down is not None and private:
            wanted = "down"  # no trigger enabled, yet the local server cannot answer: say so
        if wanted is not None:
            refused = self.refusal(private)
            if refused is None:
                return Plan(cloud=True, reason=wanted)
            return Plan(cloud=False, private=private, refused=refused, wanted=wanted, unavailable=down)
        # Armed for private requests too: when one fires, the refusal ("private") is counted.
        return Plan(cloud=False, private=private, late=self._late)

    def _wanted_now(self, header: str | None, down: str | None, body: Body, local_in_flight: int) -> str | None:
        t = self.triggers
        if header == "cloud":
            return "requested"
        if "down" in t and down is not None:
            return "down"
        if "too_long" in t:
            parsed = body.json()
            if parsed is not None and estimated_prompt_tokens(parsed) > self.cloud.max_local_prompt_tokens:
                return "too_long"
        if "overloaded" in t and local_in_flight >= self.cloud.max_local_in_flight:
            return "overloaded"
        return None
