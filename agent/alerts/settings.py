"""The ``[alerts]`` settings: rules, built-in alerts, the alert queue and its channels.

Kept apart from ``agent/config.py`` (which only adds ``alerts: AlertSettings``) so the alert package
owns its own configuration.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, ConfigDict, Field, HttpUrl, field_validator

from backhaul.errors import SelectorError
from backhaul.selector import Selector
from backhaul.settings import Secret, Section

Severity = Literal["info", "warning", "critical"]
Op = Literal[">", "<", ">=", "<=", "==", "!=", "absent"]


class RuleSettings(Section):
    """One alert rule: ``function(selector[window]) op threshold`` held for ``for``."""

    model_config = ConfigDict(populate_by_name=True)

    # The alert's name (48 bytes at most: it travels in the compact message).
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_:.-]{0,47}$")
    # A PromQL series selector, e.g. 'inference_errors_total{model="yolo"}'.
    selector: str
    # last: the newest value; rate: per-second increase over `window` (counter resets handled);
    # avg/min/max: over the samples of the last `window`.
    function: Literal["last", "rate", "avg", "min", "max"] = "last"
    window: timedelta = Field(timedelta(minutes=1), gt=timedelta(0))
    op: Op
    threshold: float = 0.0
    # The condition must hold this long (state "pending") before the alert fires.
    for_: timedelta = Field(timedelta(0), alias="for", ge=timedelta(0))
    severity: Severity = "warning"
    labels: dict[str, str] = {}
    summary: str = ""

    @field_validator("selector")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            Selector.parse(value)
        except SelectorError as exc:
            raise ValueError(str(exc)) from exc
        return value


class HttpChannelSettings(Section):
    """POST the message to the collector (``/api/v1/alerts``) with the device's bearer token."""

    type: Literal["http"] = "http"
    # Default: uplink.url with its path replaced by /api/v1/alerts, and uplink.token.
    url: HttpUrl | None = None
    token: Secret | None = None
    timeout: timedelta = timedelta(seconds=5)


class MqttChannelSettings(Section):
    """Publish the message with QoS 1; acknowledged when the broker's PUBACK arrives."""

    type: Literal["mqtt"] = "mqtt"
    host: str
    port: int = Field(1883, ge=1, le=65535)
    # {device} is replaced by the device id.
    topic: str = "backhaul/alerts/{device}"
    username: str | None = None
    password: Secret | None = None
    timeout: timedelta = timedelta(seconds=5)


class CommandChannelSettings(Section):
    """Run a program with the message; exit status 0 acknowledges it (an SMS modem, a satellite terminal)."""

    type: Literal["command"] = "command"
    # Program and arguments (no shell). "{base64}" in an argument is replaced by the message in base64.
    argv: list[str] = Field(min_length=1)
    # Also write the raw message to the program's standard input.
    stdin: bool = True
    timeout: timedelta = timedelta(seconds=30)


ChannelSettings = Annotated[
    HttpChannelSettings | MqttChannelSettings | CommandChannelSettings, Field(discriminator="type")
]


class BuiltinSettings(Section):
    """Alerts the agent raises about itself, without any rule."""

    enabled: bool = True
    # BufferNearlyFull: buffered bytes above this share of buffer.budget_bytes.
    buffer_full_ratio: float = Field(0.9, gt=0, le=1)
    # SamplesEvicted stays firing until no eviction happened for this long.
    eviction_quiet: timedelta = timedelta(minutes=5)
    # UploadsFailing: no successful upload for this long while uploads fail.
    upload_failing_after: timedelta = timedelta(minutes=10)
    # ClockSkew: the agent's clock differs from the collector's by more than this.
    clock_skew_max: timedelta = timedelta(seconds=30)
    # AgentRestarted / AgentCrashed fire at start and resolve after this long.
    restart_hold: timedelta = timedelta(minutes=10)
    # UplinkBudgetNearlySpent: this share of a link budget (uplink.daily_bytes, monthly_bytes) spent.
    budget_nearly_spent: float = Field(0.8, gt=0, lt=1)


class AlertSettings(Section):
    """Rules on the device and the alert lane (its own durable queue and sender)."""

    enabled: bool = True
    # The lane's durable queue; default: alerts.db beside buffer.path.
    queue_path: Path | None = None
    # At most this many messages wait; beyond, the oldest resolved (then lowest-severity) go first.
    max_queue: int = Field(1000, ge=10)
    # How often rules are evaluated (a sample that matches a rule also triggers an evaluation at once).
    eval_interval: timedelta = Field(timedelta(seconds=5), gt=timedelta(0))
    # A firing alert is sent again this often while it stays firing.
    repeat_interval: timedelta = Field(timedelta(hours=1), gt=timedelta(0))
    # A series that received no sample for this long is forgotten (its alert resolves).
    stale_after: timedelta = Field(timedelta(minutes=5), gt=timedelta(0))
    # Per rule, at most this many series are tracked (more are ignored and counted).
    max_series_per_rule: int = Field(1000, ge=1)
    # Bytes alert messages may put on the link per day (requests and answers, headers included),
    # counted in the alert queue's file; days are counted in uplink.budget_timezone. The bulk uplink's
    # windows and budgets never hold alerts back; past this budget they wait for the next day. 0: none.
    daily_bytes: ByteSize = Field(ByteSize(1_000_000), ge=0)
    # Retry delays while no channel acknowledges.
    backoff_min: timedelta = timedelta(milliseconds=200)
    backoff_max: timedelta = timedelta(seconds=30)
    # Also write each rule alert's change as a sample into the bulk buffer: backhaul_alert{alertname,
    # alertstate, severity, alert_fingerprint, <the series' labels>}, the long form of the compact message.
    long_form: bool = True
    # Tried in order until one acknowledges; default: [{type = "http"}] when uplink.url is set.
    channels: list[ChannelSettings] = []
    # The token the collector knows this device by: every message carries a MAC keyed by its SHA-256
    # (docs/alerts.md). Default: the first http channel's token, else uplink.token. Set it when the
    # alerts leave by MQTT or a command only.
    token: Secret | None = None
    rules: list[RuleSettings] = []
    builtin: BuiltinSettings = BuiltinSettings()

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[RuleSettings]) -> list[RuleSettings]:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError("alerts.rules: each rule name may appear once")
        return rules
