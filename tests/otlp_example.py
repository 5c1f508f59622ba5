"""An OTLP/JSON request as the protocol's own examples write one, for the unit and integration tests."""

from __future__ import annotations

import json


def official_style_json(t_ns: int = 1_700_000_000_000_000_000) -> bytes:
    """A request shaped like opentelemetry-proto's examples/metrics.json: a delta counter, a gauge and
    a delta histogram; camelCase, an int64 as a string, an exemplar with hex ids."""
    t = str(t_ns)
    return json.dumps(
        {
            "resourceMetrics": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
                    "scopeMetrics": [
                        {
                            "scope": {"name": "my.library", "version": "1.0.0"},
                            "metrics": [
                                {
                                    "name": "my.counter",
                                    "unit": "1",
                                    "sum": {
                                        "aggregationTemporality": 1,
                                        "isMonotonic": True,
                                        "dataPoints": [{"asDouble": 5, "timeUnixNano": t}],
                                    },
                                },
                                {
                                    "name": "my.gauge",
                                    "unit": "1",
                                    "description": "I am a gauge",
                                    "gauge": {
                                        "dataPoints": [
                                            {
                                                "asInt": "10",
                                                "timeUnixNano": t,
                                                "attributes": [
                                                    {"key": "my.gauge.attr", "value": {"stringValue": "v"}},
                                                    {"key": "my_gauge.attr", "value": {"intValue": "2"}},
                                                ],
                                                "exemplars": [
                                                    {
                                                        "asDouble": 9,
                                                        "timeUnixNano": t,
                                                        "traceId": "5b8efff798038103d269b633813fc60c",
                                                        "spanId": "eee19b7ec3c1b174",
                                                    }
                                                ],
                                            }
                                        ]
                                    },
                                },
                                {
                                    "name": "my.histogram",
                                    "histogram": {
                                        "aggregationTemporality": 1,
                                        "dataPoints": [
                                            {
                                                "timeUnixNano": t,
                                                "count": 3,
                                                "bucketCounts": [1, 2],
                                                "explicitBounds": [1],
                                            }
                                        ],
                                    },
                                    "futureField": {"ignored": True},
                                },
                            ],
                        }
                    ],
                }
            ]
        }
    ).encode()
