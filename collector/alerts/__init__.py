"""Urgent alerts at the collector: ``POST /api/v1/alerts`` (:mod:`.receiver`), ``GET /api/v1/alerts``
(:mod:`.listing`) and an MQTT subscriber (:mod:`.mqtt`). Each message is stored once, and the latest
state of each alert instance kept (:mod:`collector.store.records`); the Alertmanager forwarder reads
them from the store (collector/forward/alertmanager.py). Configured by ``[alerts]`` (:mod:`.settings`).

The package imports none of its modules: the settings module is loaded by the collector's root
settings, which the others import.
"""
