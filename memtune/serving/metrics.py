"""Prometheus metrics of one server (prometheus_client, in a registry of its own so several servers can share a
process, as tests do).

The gated share over a window is a PromQL ratio of `memtune_routes_total`:
    sum(rate(memtune_routes_total{gated="true"}[5m])) / sum(rate(memtune_routes_total[5m]))
`memtune_gated_share` is the same ratio since the server started, for a glance at /metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds: CPU answers take from tens of milliseconds (one short answer) to a minute (long answers under load).
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "memtune_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "memtune_request_latency_seconds",
            "Time from request to the last byte of the answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "memtune_time_to_first_token_seconds",
            "Time from request to the first generated text",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("memtune_prompt_tokens", "Prompt tokens of answered requests", registry=r)
        self.completion_tokens = Counter("memtune_completion_tokens", "Generated tokens", registry=r)
        self.routes = Counter(
            "memtune_routes", "Answered prompts by whether the gate kept the experts off", ["gated"], registry=r
        )
        self.gated_share = Gauge(
            "memtune_gated_share", "Share of routed prompts that were gated, since start", registry=r
        )
        self.batch_size = Histogram(
            "memtune_batch_size",
            "Sequences per batch (one shared prefill and decode)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("memtune_queue_depth", "Sequences waiting for the next batch", registry=r)
        self.reloads = Counter("memtune_reloads", "Model reloads by result", ["result"], registry=r)
        self.model_info = Gauge(
            "memtune_model_info", "The run being served (value 1)", ["model", "run", "manifest_sha256"], registry=r
        )
        self._routed = 0
        self._gated = 0

    def count_route(self, gated: bool) -> None:
        self.routes.labels(gated=str(gated).lower()).inc()
        self._routed += 1
        self._gated += int(gated)
        self.gated_share.set(self._gated / self._routed)

    def serving(self, model: str, run: str | None, manifest_sha256: str | None) -> None:
        self.model_info.clear()
        self.model_info.labels(model=model, run=run or "", manifest_sha256=manifest_sha256 or "").set(1)
