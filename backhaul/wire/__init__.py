"""The formats both sides speak.

- ``remote_write``: Prometheus remote write 1.0 (snappy-compressed protobuf ``WriteRequest``), and
  the ``Content-Type`` negotiation between 1.0 and 2.0.
- ``remote_write_v2``: Prometheus Remote-Write 2.0 (``io.prometheus.write.v2.Request``).
- ``otlp``: OTLP/HTTP metrics (protobuf or JSON) mapped to Prometheus series.
- ``chunk``: backhaul's columnar chunk, the unit stored in the agent's buffer and carried in batches.
- ``batch``: the upload envelope (device, buffer id, sequence, loss counters, chunks).
- ``series``, ``histogram``, ``metadata``: the shapes decoded data takes (float samples, exemplars,
  native histograms, per-family metadata).

Every decoder raises :class:`WireError` (or a subclass) with a reason a person can act on.
Documented in ``docs/wire-format.md``.
"""

from backhaul.wire.errors import TooLarge, Unsupported, WireError
from backhaul.wire.series import Labels, SeriesMap

__all__ = ["Labels", "SeriesMap", "TooLarge", "Unsupported", "WireError"]
