"""The tests' name for the shared harness (:mod:`harness`), kept so that test modules import from one
place; new code may import from ``harness`` directly."""

from harness import *  # noqa: F403
from harness import __all__ as __all__
