"""Prometheus metrics of the server (`GET /metrics`, text format via prometheus-client).

Names follow vLLM's (docs/design/metrics.md) under the `gencycle:` prefix, each with a
`model_name` label: requests by endpoint and finish reason, prompt and generated tokens, time to
first token, inter-token latency and end-to-end latency (histograms), rows running and requests
waiting (read from the engine at each scrape).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
                   20.0, 60.0)


class Metrics:
    """One registry per app (so several apps in one process, as in tests, do not collide)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str):
        self.registry = registry = CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]
        self.requests = Counter("gencycle:requests", "finished requests by endpoint and finish reason",
                                labels + ["endpoint", "finish_reason"], registry=registry)
        self.prompt_tokens = Counter("gencycle:prompt_tokens", "prompt tokens prefilled", labels, registry=registry)
        self.generation_tokens = Counter("gencycle:generation_tokens", "tokens generated", labels, registry=registry)
        self.time_to_first_token = Histogram("gencycle:time_to_first_token_seconds",
                                             "from the request's arrival to its first generated token", labels,
                                             buckets=LATENCY_BUCKETS, registry=registry)
        self.inter_token_latency = Histogram("gencycle:inter_token_latency_seconds",
                                             "between two generated tokens of a sequence", labels,
                                             buckets=LATENCY_BUCKETS, registry=registry)
        self.e2e_latency = Histogram("gencycle:e2e_request_latency_seconds", "from arrival to the last token",
                                     labels, buckets=LATENCY_BUCKETS, registry=registry)
        self.running = Gauge("gencycle:num_requests_running", "sequences in the running batch", labels,
                             registry=registry)
        self.waiting = Gauge("gencycle:num_requests_waiting", "requests queued for a place in the batch", labels,
                             registry=registry)

    def watch(self, engine) -> None:
        """Read the running and waiting counts from the engine at each scrape."""
        self.running.labels(self.model_name).set_function(lambda: engine.running)
        self.waiting.labels(self.model_name).set_function(lambda: engine.waiting)

    def finished(self, endpoint: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.requests.labels(self.model_name, endpoint, finish_reason).inc()
        self.prompt_tokens.labels(self.model_name).inc(prompt_tokens)
        self.generation_tokens.labels(self.model_name).inc(completion_tokens)

    def first_token(self, seconds: float) -> None:
        self.time_to_first_token.labels(self.model_name).observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self.inter_token_latency.labels(self.model_name).observe(seconds)

    def end_to_end(self, seconds: float) -> None:
        self.e2e_latency.labels(self.model_name).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
