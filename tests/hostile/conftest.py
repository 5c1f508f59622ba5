"""Fixtures of the hostile-input tests: the real Mosquitto broker of the alert tests."""

from tests.alerts.conftest import mosquitto

__all__ = ["mosquitto"]
