"""The formats both sides speak.

- ``remote_write``: Prometheus remote write 1.0 (snappy-compressed protobuf ``WriteRequest``).
- ``chunk``: backhaul's columnar chunk, the unit stored in the agent's buffer and carried in batches.
- ``batch``: the upload envelope (device, buffer id, sequence, loss counters, chunks).

Every decoder raises :class:`WireError` (or a subclass) with a reason a person can act on.
Documented in ``docs/wire-format.md``.
"""

from backhaul.wire.errors import TooLarge, Unsupported, WireError
from backhaul.wire.series import Labels, SeriesMap

__all__ = ["Labels", "SeriesMap", "TooLarge", "Unsupported", "WireError"]
