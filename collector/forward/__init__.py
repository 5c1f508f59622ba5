"""What the collector passes on: alerts to Alertmanager and webhooks."""
