"""Urgent alerts at the collector: received over HTTP and MQTT (:mod:`collector.alerts.receiver`),
configured by ``[alerts]`` (:mod:`collector.alerts.settings`)."""
