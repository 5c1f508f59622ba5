"""Urgent alerts at the collector: ``POST /api/v1/alerts`` (:mod:`.receiver`), ``GET /api/v1/alerts``
(:mod:`.listing`) and an MQTT subscriber (:mod:`.mqtt`). Each message is stored once, and the latest
state of each alert instance kept (:mod:`collector.store.records`); the Alertmanager forwarder reads
them from the store (collector/forward/alertmanager.py).
"""

from __future__ import annotations

from collector.alerts.listing import AlertLister
from collector.alerts.mqtt import MqttSubscriber
from collector.alerts.receiver import AlertReceiver, claimed_by

__all__ = ["AlertLister", "AlertReceiver", "MqttSubscriber", "claimed_by"]
