# The two commands a newcomer needs: `make demo` and `make test`. Both bootstrap .venv themselves.
.PHONY: demo test bench lint venv fuzz

venv:
	scripts/bootstrap

demo:
	scripts/demo

test:
	scripts/test

# About 35 minutes: ~1k series over a simulated hour, then 10k series (15 min of scrapes for the
# sizes, an hour's backlog for the drain) and what one 10k series request costs at least in CPython
# (bench/decode_floor.py), each figure next to its references from the same run;
# then a simulated day on metered links (bench/metered.py); then the collector (bench/collector.py:
# simulated devices against SQLite, two collectors on PostgreSQL, forwarding to VictoriaMetrics;
# VictoriaMetrics and the row store as references); then the footprint on a small device
# (bench/footprint.py: one node_exporter every 5 s through the agent, vmagent and Prometheus in agent
# mode side by side, 5 min, then the same at 10k series; `.venv/bin/python -m bench.footprint --quick`
# is the 2-minute version, and docs/benchmarks.md gives the churn and the outage-and-drain runs).
bench: venv
	vmagent=$$(bench/fetch-vmagent || true); \
	.venv/bin/python -m bench.foundation --series 1000 --vmagent "$$vmagent" && \
	.venv/bin/python -m bench.foundation --series 10000 --minutes 15 --drain-minutes 60 --vmagent "$$vmagent" && \
	.venv/bin/python -m bench.decode_floor && \
	.venv/bin/python -m bench.metered && \
	.venv/bin/python -m bench.collector && \
	.venv/bin/python -m bench.collector --batch-seconds 60 --skip vm,rows && \
	.venv/bin/python -m bench.footprint --vmagent "$$vmagent" && \
	.venv/bin/python -m bench.footprint --vmagent "$$vmagent" --series 10000 --idle-seconds 20

# ruff (lint and format) over the tree; mypy over the packages, tests/ and bench/ ([tool.mypy] in pyproject.toml).
lint: venv
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

# Issue 12's fuzz run: a million structure-aware hostile requests against a real collector, agent and
# Mosquitto; prints the figures and exits 1 when the bar is not met (about an hour on 2 busy cores).
fuzz: venv
	.venv/bin/python -m bench.fuzz --cases 1000000
