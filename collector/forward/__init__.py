"""What the collector passes on: every stored sample, by Prometheus remote write, to each configured
time-series database through a durable spool per target (see docs/forwarding.md); and alerts to
Alertmanager and webhooks (see docs/alerts.md)."""
