"""Benchmarks and soaks, run as modules from the repository root with the project's virtualenv:
``.venv/bin/python -m bench.foundation`` (``make bench``), ``-m bench.drain``, ``-m bench.soak``,
``-m bench.alert_latency``, ``-m bench.proxy_overhead``. They drive real processes through the
shared :mod:`harness`."""
