"""Code shared by the backhaul agent and collector: the wire format and small runtime helpers."""

__version__ = "0.1.0"
