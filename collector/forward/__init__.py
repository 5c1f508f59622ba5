"""Forwarding: every sample the collector stores also goes, by Prometheus remote write, to each
configured time-series database, through a durable spool per target (see docs/forwarding.md)."""
