"""Prometheus metrics of the gateway, registered on an injected registry.

RPC metrics use the go-grpc-prometheus names so existing dashboards work. Labels are bounded:
methods, codes, message kinds, reason codes and platform ids; never persons or message ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.store import DeliveryStats

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        rpc = ["grpc_type", "grpc_service", "grpc_method"]
        self.rpc_started = Counter("grpc_server_started", "RPCs started on the server.", rpc, registry=registry)
        self.rpc_handled = Counter(
            "grpc_server_handled", "RPCs completed on the server, by status code.", [*rpc, "grpc_code"],
            registry=registry,
        )
        self.rpc_msg_received = Counter(
            "grpc_server_msg_received", "Stream messages received by the server.", rpc, registry=registry
        )
        self.rpc_msg_sent = Counter("grpc_server_msg_sent", "Stream messages sent by the server.", rpc,
                                    registry=registry)
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds", "Time to handle an RPC (streams: until the stream ends).", rpc,
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.messages = Counter(
            "transfer_gateway_messages",
            "Business messages submitted, by kind and result (accepted, replayed, rejected) and reason code.",
            ["kind", "result", "reason"], registry=registry,
        )
        self.signature_failures = Counter(
            "transfer_gateway_signature_failures", "Submissions refused for an unknown key or a bad signature.",
            ["platform"], registry=registry,
        )
        self.deliveries = Counter(
            "transfer_gateway_deliveries", "Deliveries put on a subscription stream (attempt: first or redelivery).",
            ["platform", "attempt"], registry=registry,
        )
        self.reviews = Counter(
            "transfer_gateway_reviews", "Reviewers' decisions on held fund transfers.", ["decision"],
            registry=registry,
        )
        self.cases_expired = Counter(
            "transfer_gateway_cases_expired", "Cases closed because the outbound side never answered the request.",
            registry=registry,
        )
        self.deliveries_pending = Gauge(
            "transfer_gateway_deliveries_pending", "Deliveries waiting for their receiver (pending or in flight).",
            ["platform"], registry=registry,
        )
        self.dead_letters = Gauge(
            "transfer_gateway_dead_letters", "Deliveries given up after too many unacknowledged attempts.",
            ["platform"], registry=registry,
        )
        self.oldest_undelivered = Gauge(
            "transfer_gateway_oldest_undelivered_age_seconds",
            "Age of the oldest unacknowledged delivery per receiving platform (0 when none).",
            ["platform"], registry=registry,
        )

    def observe_backlog(self, stats: list[DeliveryStats], now_seconds: float, platforms: list[str]) -> None:
        """Set the backlog gauges from a store reading; platforms with nothing waiting read 0."""
        by_platform = {s.platform: s for s in stats}
        for platform in sorted(set(platforms) | set(by_platform)):
            s = by_platform.get(platform)
            self.deliveries_pending.labels(platform).set((s.pending + s.in_flight) if s else 0)
            self.dead_letters.labels(platform).set(s.dead_letters if s else 0)
            oldest = s.oldest_undelivered_at if s else None
            self.oldest_undelivered.labels(platform).set(
                max(0.0, now_seconds - oldest.timestamp()) if oldest else 0.0
            )
