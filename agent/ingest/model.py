"""``backhaul_model_info{name,version,sha256} 1``: which model this device runs.

The info metric lives on the agent's registry, so the self-scrape carries it to the collector with
the rest of the agent's metrics. A model file can be gigabytes: its SHA-256 is computed once, at
start, on a worker thread; until it is known (or if the file cannot be read) ``sha256`` says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from prometheus_client import CollectorRegistry, Info

log = logging.getLogger(__name__)


def file_sha256(path: Path, block: int = 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


class ModelInfo:
    """Publishes the model's identity.

    Args:
        registry: where ``backhaul_model_info`` is registered.
        name: model name (from the config).
        version: model version (from the config).
        path: the model file, whose digest is reported; None for none.
    """

    def __init__(self, registry: CollectorRegistry, name: str, version: str, path: Path | None) -> None:
        self._name = name
        self._version = version
        self._path = path
        self.info = Info("backhaul_model", "The inference model this device runs", registry=registry)
        self.sha256 = "" if path is None else "pending"
        self._publish()

    def _publish(self) -> None:
        self.info.info({"name": self._name, "version": self._version, "sha256": self.sha256})

    async def compute_digest(self) -> None:
        """Hash the model file off the event loop and publish the result."""
        if self._path is None:
            return
        try:
            self.sha256 = await asyncio.to_thread(file_sha256, self._path)
        except OSError as exc:
            log.warning("model file %s cannot be read: %s", self._path, exc)
            self.sha256 = "unreadable"
        else:
            log.info("model %s %s: %s sha256 %s", self._name, self._version, self._path, self.sha256)
        self._publish()
