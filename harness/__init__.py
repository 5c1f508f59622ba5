"""The harness that tests, benchmarks and the demo share: real backhaul processes on 127.0.0.1 and the
traffic around them (installed with the project, as ``aiohttp.test_utils`` is with aiohttp).

Modules, one concern each:

- :mod:`harness.net`: free ports, one blocking HTTP request, JSON pages, polling (``wait_until``).
- :mod:`harness.metrics`: reading ``/metrics`` pages.
- :mod:`harness.config`: config files, written with tomli-w; the test device's token.
- :mod:`harness.process`: child processes with a log (:class:`Process`, :class:`Proc` for our
  console scripts) and :class:`ProcError`; ``require_program`` for a test's real peers.
- :mod:`harness.remote_write`: playing the device's Prometheus (``push``, :class:`Sender`,
  :class:`RecordingSender`).
- :mod:`harness.collector`: what a collector holds, through its export API.
- :mod:`harness.agent`: an agent's buffer database read from outside.
- :mod:`harness.proxy`: proxies between agent and collector (:class:`DelayProxy`, the byte-counting
  :class:`CountingProxy`), :class:`TlsFront`.
- :mod:`harness.netns`: network namespaces (root only): :class:`Netns`, ``veth`` pairs between them.
- :mod:`harness.prometheus`: a real Prometheus (``start_prometheus``; ``prometheus3``, one that sends 2.0).

The public API is exactly ``__all__`` (checked by tests/unit/test_harness.py).
"""

from harness.agent import LOSS_CAUSES, agent_loss_counters, buffer_contents, copy_database, samples_at
from harness.collector import export, exported_samples, reported_losses, same_value, stored_contents
from harness.config import READ, READ_HEADERS, READ_TOKEN, TOKEN, agent_config, collector_config, toml_text, write_toml
from harness.metrics import metric_sum, metric_value, parse_metrics, read_metrics
from harness.net import QuietHandler, free_port, get_json, http, wait_until
from harness.netns import Netns, veth
from harness.process import BIN, Proc, ProcError, Process, child_env, faketime_env, require_program
from harness.prometheus import prometheus3, start_prometheus
from harness.proxy import CountingProxy, DelayProxy, LoopbackProxy, LoopThread, TlsFront
from harness.remote_write import RW_HEADERS, Attempt, RecordingSender, Sender, push, raw_label, raw_series

__all__ = [
    "BIN",
    "LOSS_CAUSES",
    "READ",
    "READ_HEADERS",
    "READ_TOKEN",
    "RW_HEADERS",
    "TOKEN",
    "Attempt",
    "CountingProxy",
    "DelayProxy",
    "LoopThread",
    "LoopbackProxy",
    "Netns",
    "Proc",
    "ProcError",
    "Process",
    "QuietHandler",
    "RecordingSender",
    "Sender",
    "TlsFront",
    "agent_config",
    "agent_loss_counters",
    "buffer_contents",
    "child_env",
    "collector_config",
    "copy_database",
    "export",
    "exported_samples",
    "faketime_env",
    "free_port",
    "get_json",
    "http",
    "metric_sum",
    "metric_value",
    "parse_metrics",
    "prometheus3",
    "push",
    "raw_label",
    "raw_series",
    "read_metrics",
    "reported_losses",
    "require_program",
    "same_value",
    "samples_at",
    "start_prometheus",
    "stored_contents",
    "toml_text",
    "veth",
    "wait_until",
    "write_toml",
]
