"""Urgent alerts: rules on the device, built-in checks, and a lane of their own to the collector."""
