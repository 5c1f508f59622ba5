"""A reverse proxy in front of the inference HTTP API: it measures what passes and, with a cloud model
configured (``[proxy.cloud]``), escalates requests the local model cannot serve.

    settings.py   [proxy] and [proxy.cloud]
    routing.py    the decision: local, cloud now, or cloud if the local start is slow or fails
    server.py     the listener and one request's path (InferenceProxy)
    upstream.py   one upstream's session, TLS, credentials; aiohttp's errors translated
    forward.py    relaying answers to the client; the proxy's own answers
    measure.py    tokens, time to first token, decode rate
    metrics.py    backhaul_proxy_*
    link.py       LinkGate: what the metered link allows (the uplink's budget, issue 13)
    errors.py     UpstreamError

Nothing is imported here: the agent's settings read ``agent.proxy.settings`` whether or not a proxy
is configured, and importing the proxy itself is left to the agent that runs one (agent.sources).
"""
