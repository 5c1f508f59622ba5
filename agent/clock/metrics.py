"""The clock's state, its jumps and what was corrected (``backhaul_clock_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ClockMetrics:
    """Args: registry: where the metrics are registered (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.corrected = Counter(
            "backhaul_clock_corrected_samples",
            "Samples whose timestamps were corrected by the offset of the clock era that stamped them",
            registry=r,
        )
        self.expired = Counter(
            "backhaul_clock_expired_samples",
            "Held samples expired because their era's offset could not be learnt in time (or ever);"
            " also counted in backhaul_buffer_expired_samples_total",
            registry=r,
        )
        self.jumps = Counter(
            "backhaul_clock_jumps",
            "Steps of the wall clock against CLOCK_BOOTTIME, by direction",
            ["direction"],
            registry=r,
        )
        self.last_jump = Gauge(
            "backhaul_clock_last_jump_seconds",
            "Size of the last jump of the wall clock (positive: forward)",
            registry=r,
        )
        self.last_jump_time = Gauge(
            "backhaul_clock_last_jump_timestamp_seconds", "Wall clock right after the last jump", registry=r
        )
        self.offset = Gauge(
            "backhaul_clock_offset_seconds",
            "True time minus the agent's clock in the current era, as applied to its samples (0 until known)",
            registry=r,
        )
        self.offset_error = Gauge(
            "backhaul_clock_offset_error_seconds",
            "Half the width of what the collector's replies allow the current era's offset to be",
            registry=r,
        )
        self.trusted = Gauge(
            "backhaul_clock_trusted",
            "1 when the current era's offset is known (right, or corrected); 0 while its samples are held",
            registry=r,
        )
        self.below_floor = Gauge(
            "backhaul_clock_below_floor", "1 when the current era began earlier than the floor", registry=r
        )
        self.held = Gauge("backhaul_clock_held_samples", "Samples held until their era's offset is known", registry=r)
        self.floor = Gauge(
            "backhaul_clock_floor_timestamp_seconds",
            "Earlier than this the clock is wrong (the build time)",
            registry=r,
        )
