"""Reload without restart, for both programs: SIGHUP (``systemctl reload``) re-reads the whole config.

One pass of :meth:`ConfigReload.reload`:

1. the config file (and ``BACKHAUL_*``) is loaded and validated exactly as at start, plus the
   program's own checks; anything wrong and the new config is refused whole: the running one stays,
   the reason is logged, ``backhaul_config_last_reload_successful`` goes to 0;
2. the settings that changed are listed (dotted paths, ``scrape.targets``); each component registered
   the paths it can apply (:meth:`ConfigReload.apply`), and gets the new settings when one of its
   paths changed; a changed setting nobody applies needs a restart: it is logged as such and the
   value in force stays (so what the program reports as its settings is what it runs with);
3. the files the program re-reads anyway (TLS certificates, :meth:`Lifecycle.on_reload`) are re-read.

The success gauge and ``backhaul_config_last_reload_success_timestamp_seconds`` follow Prometheus'
names and meaning (the timestamp is that of the start until a reload succeeds).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Gauge
from pydantic import BaseModel

from backhaul.errors import ConfigError
from backhaul.lifecycle import Lifecycle

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def changed_paths(old: BaseModel, new: BaseModel, prefix: str = "") -> list[str]:
    """The dotted paths of the settings whose values differ, down to the deepest section both share."""
    out: list[str] = []
    for name in type(old).model_fields:
        a, b = getattr(old, name), getattr(new, name)
        path = f"{prefix}{name}"
        if isinstance(a, BaseModel) and isinstance(b, BaseModel) and type(a) is type(b):
            out.extend(changed_paths(a, b, f"{path}."))
        elif a != b:
            out.append(path)
    return out


def covered(path: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    """``path`` is one of ``prefixes`` or inside one (``scrape.targets`` covers ``scrape.targets``)."""
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def merged(old: M, new: M, applied: list[str], prefix: str = "") -> M:
    """``old`` with the values of ``new`` wherever ``applied`` covers them: the settings in force."""
    updates: dict[str, Any] = {}
    for name in type(old).model_fields:
        a, b = getattr(old, name), getattr(new, name)
        path = f"{prefix}{name}"
        if any(path == p or path.startswith(p + ".") for p in applied):
            updates[name] = b
        elif isinstance(a, BaseModel) and isinstance(b, BaseModel) and type(a) is type(b):
            updates[name] = merged(a, b, applied, f"{path}.")
    return old.model_copy(update=updates)


@dataclass
class _Step(Generic[M]):
    what: str
    paths: tuple[str, ...]
    run: Callable[[M], object]


@dataclass
class Outcome:
    """What one reload did: ``ok``; ``applied`` and ``restart`` (changed setting paths); ``error``."""

    ok: bool
    applied: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)
    error: str = ""


class ConfigReload(Generic[M]):
    """The reload of one program's configuration.

    Args:
        name: the program, for log lines.
        current: the settings in force.
        load: re-reads and validates the config (raises :class:`ConfigError`), e.g.
            ``lambda: load(AgentSettings, path)``; None: there is no file to re-read (tests, an
            agent built in code): only the lifecycle's files are re-read.
        registry: where the two ``backhaul_config_*`` gauges go.
        check: more checks on a new config (sync or async), as at start; raises ConfigError.
        clock: wall clock in seconds.
    """

    def __init__(
        self,
        name: str,
        current: M,
        load: Callable[[], M] | None,
        registry: CollectorRegistry,
        check: Callable[[M], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.current = current
        self._load = load
        self._check = check
        self._clock = clock
        self._steps: list[_Step[M]] = []
        self._lock = asyncio.Lock()
        self.last: Outcome | None = None
        self.last_at: float | None = None
        self.successful = Gauge(
            "backhaul_config_last_reload_successful",
            "1 if the last configuration reload succeeded (or none was asked for), 0 if it was refused",
            registry=registry,
        )
        self.success_time = Gauge(
            "backhaul_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (the start until a reload succeeds)",
            registry=registry,
        )
        self.last_success_at = clock()
        self.successful.set(1)
        self.success_time.set(self.last_success_at)

    def apply(self, what: str, paths: tuple[str, ...], run: Callable[[M], object]) -> None:
        """``run(new)`` (sync or returning an awaitable) when a setting under one of ``paths`` changed."""
        self._steps.append(_Step(what, paths, run))

    @property
    def reloadable(self) -> list[str]:
        return [p for step in self._steps for p in step.paths]

    async def reload(self, lifecycle: Lifecycle | None = None) -> Outcome:
        """One reload (see the module docstring); reloads asked for meanwhile wait their turn."""
        async with self._lock:
            outcome = await self._reload()
            if lifecycle is not None:
                await lifecycle.reload()
            self.last, self.last_at = outcome, self._clock()
            self.successful.set(1 if outcome.ok else 0)
            if outcome.ok:
                self.last_success_at = self.last_at
                self.success_time.set(self.last_at)
            return outcome

    async def _reload(self) -> Outcome:
        if self._load is None:
            log.info("%s: no config file to re-read", self.name)
            return Outcome(True)
        try:
            new = self._load()
            if self._check is not None:
                checked = self._check(new)
                if inspect.isawaitable(checked):
                    await checked
        except ConfigError as exc:
            reason = str(exc).replace("\n", "; ")
            log.error("%s: reload refused, the running configuration stays: %s", self.name, reason)
            return Outcome(False, error=reason)
        changed = changed_paths(self.current, new)
        reloadable = self.reloadable
        applied = [p for p in changed if covered(p, reloadable)]
        restart = [p for p in changed if p not in applied]
        for path in restart:
            log.warning("%s: %s changed: it needs a restart; the value in force stays until then", self.name, path)
        done: list[str] = []
        for step in self._steps:
            mine = [p for p in applied if covered(p, step.paths)]
            if not mine:
                continue
            try:
                result = step.run(new)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                # The steps before it are in force (and kept as such); this one and the rest are not.
                log.exception("%s: applying the new %s failed; what was in force stays", self.name, step.what)
                self.current = merged(self.current, new, done)
                return Outcome(False, done, restart, f"{step.what}: {exc}")
            done.extend(mine)
            log.info("%s: %s reloaded", self.name, step.what)
        self.current = merged(self.current, new, applied)
        log.info(
            "%s: configuration reloaded (%s)%s",
            self.name,
            ", ".join(applied) or "no change",
            f"; needing a restart: {', '.join(restart)}" if restart else "",
        )
        return Outcome(True, applied, restart)

    def describe(self) -> dict[str, object]:
        """For the local status endpoint."""
        last = self.last
        return {
            "last_reload_successful": last.ok if last is not None else True,
            "last_reload_at": self.last_at,
            "last_success_at": self.last_success_at,
            "applied": last.applied if last is not None else [],
            "needs_restart": last.restart if last is not None else [],
            "error": last.error if last is not None else "",
        }
