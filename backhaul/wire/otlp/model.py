"""What mapping OTLP to Prometheus takes (:class:`Options`) and gives (:class:`Mapped`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from backhaul.wire import remote_write as rw


@dataclass
class Options:
    """How OTLP is mapped to Prometheus.

    Args:
        unit_suffixes: append the (converted) unit to metric names, and ``_total`` to counters.
        scope_labels: label every point with ``otel_scope_name`` / ``otel_scope_version``.
        target_info: write one ``target_info`` series per resource with its other attributes.
        promote_resource_attributes: resource attributes also copied onto every series of the resource.
    """

    unit_suffixes: bool = True
    scope_labels: bool = True
    target_info: bool = True
    promote_resource_attributes: tuple[str, ...] = ()


@dataclass
class Mapped:
    """A request mapped to Prometheus shapes.

    Args:
        decoded: the series, native histograms, exemplars, metadata and created timestamps, with
            samples dropped by the receiver's limits counted in ``decoded.dropped``.
        points: OTLP data points in the request.
        rejected: data points refused, by reason (what OTLP's partial success reports).
    """

    decoded: rw.Decoded = field(default_factory=rw.Decoded)
    points: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str, points: int = 1) -> None:
        if points:
            self.rejected[reason] = self.rejected.get(reason, 0) + points

    @property
    def rejected_points(self) -> int:
        return sum(self.rejected.values())

    def error_message(self) -> str:
        """What partial success says: the reasons and how many points each refused; "" if none."""
        if not self.rejected:
            return ""
        parts = ", ".join(f"{reason} ({n})" for reason, n in sorted(self.rejected.items()))
        return f"{self.rejected_points} of {self.points} data points refused: {parts}"
