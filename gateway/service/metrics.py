"""Prometheus metrics of the gateway, registered on an injected registry.

RPC metrics use the go-grpc-prometheus names so existing dashboards work. Labels are bounded:
methods, codes, message kinds, reason codes, platform ids, stages, owners and 2-digit provinces;
never persons or message ids. Stage metrics carry the stage's owner (whose clock it is) and the
province answerable for it beside the province pair, so a province is shown late only for its
own delays; the owner and its province follow from the stage and the pair, so they add no series.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.core.messages import kind_name
from gateway.core.sla import STAGES, Sla, owner_province, province
from gateway.store import (
    AcceptOutcome,
    DeadLetterCount,
    DeliveryStats,
    Escalation,
    IndexCount,
    Retimed,
    SettlementLine,
    StageCount,
    StageTotal,
)
from mitransfer.v1 import messages_pb2

_WORKING_DAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0)
_PAIR = ["outbound_province", "inbound_province"]
_STAGE = ["stage", "owner", "owner_province", *_PAIR]
# Enrollment to completion of an automatic case, in working days: Zhejiang's cross-province
# average of 0.47 working days (2022–2024) is a bucket bound, the figure to beat.
_AUTOMATIC_BUCKETS = (0.05, 0.1, 0.25, 0.47, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0)
# How a case opened, as a label: the request's channel, or "outbound" when the notice opened it.
CHANNELS: dict[int, str] = {
    messages_pb2.TransferRequest.CHANNEL_UNSPECIFIED: "outbound",
    messages_pb2.TransferRequest.CHANNEL_ONLINE: "online",
    messages_pb2.TransferRequest.CHANNEL_COUNTER: "counter",
    messages_pb2.TransferRequest.CHANNEL_EMPLOYER: "employer",
    messages_pb2.TransferRequest.CHANNEL_AUTOMATIC: "automatic",
}
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
        self.throttled = Counter(
            "transfer_gateway_throttled",
            "Calls refused RESOURCE_EXHAUSTED because their caller was over a limit (calls_in_flight,"
            " requests_per_second, subscriptions), by caller (platform or operator id).",
            ["caller", "limit"], registry=registry,
        )
        self.subscriptions = Gauge(
            "transfer_gateway_subscriptions", "Subscribe streams open on this process, by caller.", ["caller"],
            registry=registry,
        )
        self.delivery_claims = Counter(
            "transfer_gateway_delivery_claims",
            "Times a subscription stream asked the store for deliveries (woken by news, not polling: idle"
            " streams ask nothing).", ["platform"], registry=registry,
        )
        self.reviews = Counter(
            "transfer_gateway_reviews", "Reviewers' decisions on held fund transfers.", ["decision"],
            registry=registry,
        )
        self.closures = Counter(
            "transfer_gateway_cases_closed_by_operator",
            "Cases an operator closed (Admin.CloseCase): unanswered requests, and automatic cases waiting for"
            " blockers nobody cleared.", registry=registry,
        )
        self.rejudged = Counter(
            "transfer_gateway_stages_rejudged",
            "Finished stages judged again when a newer working-day calendar was loaded, by their result now"
            " (per process: the replica that counted them again).", ["result"], registry=registry,
        )
        self.deliveries_pending = Gauge(
            "transfer_gateway_deliveries_pending", "Deliveries waiting for their receiver (pending or in flight).",
            ["platform"], registry=registry,
        )
        self.dead_letters = Gauge(
            "transfer_gateway_dead_letters", "Deliveries given up after too many unacknowledged attempts.",
            ["platform"], registry=registry,
        )
        self.dead_letters_by_kind = Gauge(
            "transfer_gateway_dead_letters_by_kind",
            "Dead-lettered deliveries by receiving platform, message kind and reason (UNACKNOWLEDGED,"
            " STREAM_ENDED, TOO_LARGE); kind fund_transfer has an alert of its own.",
            ["platform", "kind", "reason"], registry=registry,
        )
        self.oldest_undelivered = Gauge(
            "transfer_gateway_oldest_undelivered_age_seconds",
            "Age of the oldest unacknowledged delivery per receiving platform (0 when none).",
            ["platform"], registry=registry,
        )

        # SLA: observed when a stage finishes (per process: sum across replicas) …
        self.stage_duration = Histogram(
            "transfer_gateway_stage_duration_workdays",
            "Working days a finished stage took (working hours only, in days), by stage, owner and province pair.",
            _STAGE, buckets=_WORKING_DAY_BUCKETS, registry=registry,
        )
        # … and read from the store by the periodic monitor (the same on every replica: use max()).
        self.stages_finished = Gauge(
            "transfer_gateway_stages_finished",
            "Stages finished ever, by result (on_time, late) as judged on the current calendar, stage, owner and"
            " province pair (running totals in the store).", [*_STAGE, "result"], registry=registry,
        )
        self.cases_open = Gauge(
            "transfer_gateway_cases_open",
            "Open cases in each stage (total: every open case but those waiting for their blockers to be resolved),"
            " by stage, owner and province pair.",
            _STAGE, registry=registry,
        )
        self.cases_overdue = Gauge(
            "transfer_gateway_cases_overdue",
            "Open cases past the deadline of a stage, by stage, owner (whose delay) and province pair.",
            _STAGE, registry=registry,
        )
        self.cases_due_soon = Gauge(
            "transfer_gateway_cases_due_soon",
            "Open cases whose stage's last day is today or the next working day, by stage, owner and province pair.",
            _STAGE, registry=registry,
        )
        self.requests_escalated = Gauge(
            "transfer_gateway_requests_escalated",
            "Transfer requests the outbound side left unanswered past its limit (escalated, not closed), by"
            " province pair.", _PAIR, registry=registry,
        )
        self.funds = Gauge(
            "transfer_gateway_funds_fen",
            "Personal-account fund transfers ever accepted, by status now, in fen: sent (all of them) ="
            " credited + returned + held + in_flight; rejected and awaiting_return overlap those.",
            ["status", *_PAIR], registry=registry,
        )
        self.calendar_fallback = Gauge(
            "transfer_gateway_calendar_fallback",
            "1 when deadlines in this year are counted Monday–Friday because no official calendar is known.",
            ["year"], registry=registry,
        )
        self.store_available = Gauge(
            "transfer_gateway_store_available",
            "1 while the store takes writes and answers reads (the monitor's write probe and readings, each"
            " interval); 0 otherwise, and health is NOT_SERVING.", registry=registry,
        )
        self.log_leaves = Gauge(
            "transfer_gateway_log_leaves", "Entries in the transparency log, checkpointed or not (from the store).",
            registry=registry,
        )
        self.log_checkpoint_size = Gauge(
            "transfer_gateway_log_checkpoint_tree_size",
            "Leaves in the transparency log's latest signed checkpoint.", registry=registry,
        )
        self.log_checkpoint_time = Gauge(
            "transfer_gateway_log_checkpoint_timestamp_seconds",
            "When the transparency log's latest checkpoint was signed (Unix time).", registry=registry,
        )
        self.log_cpu = Gauge(
            "transfer_gateway_log_cpu_seconds",
            "CPU time this process spent on the transparency log since it started: serializing and storing"
            " each accept's entries, extending the tree, signing checkpoints.", registry=registry,
        )
        # Automatic transfer (免申请): how cases open, how the index fills, how fast automatic cases end.
        self.cases_opened = Counter(
            "transfer_gateway_cases_opened",
            "Cases opened, by province pair and channel (automatic: by the gateway from a suspended record and an"
            " enrollment; outbound: by the outbound notice). The share opened automatically is"
            " pair:transfer_gateway_cases_opened_automatic:ratio1d.", [*_PAIR, "channel"], registry=registry,
        )
        self.index_reports = Counter(
            "transfer_gateway_index_reports",
            "Suspended records and enrollments accepted into the index, by kind, the reporting agency's province and"
            " result (opened: it opened at least one case; waiting: none yet).", ["kind", "province", "result"],
            registry=registry,
        )
        self.automatic_completion = Histogram(
            "transfer_gateway_automatic_completion_workdays",
            "Working days from the enrollment's acceptance to the completion of the automatic case it opened, by"
            " province pair (Zhejiang's cross-province average to beat: 0.47).", _PAIR,
            buckets=_AUTOMATIC_BUCKETS, registry=registry,
        )
        self.index_entries = Gauge(
            "transfer_gateway_index_entries",
            "Entries waiting in the suspended-record index (kind record, enrollment) and open cases (kind case),"
            " by the id of the person-key secret they are keyed under.", ["kind", "key_id"], registry=registry,
        )
        self.index_stale = Gauge(
            "transfer_gateway_index_stale_entries",
            "Waiting index entries and open cases keyed under another secret than the current one (0 once a"
            " rotation is done).",
            registry=registry,
        )
        self.index_rekeyed = Counter(
            "transfer_gateway_index_rekeyed", "Index entries keyed again under the current person-key secret.",
            registry=registry,
        )
        self.enrollments_lapsed = Counter(
            "transfer_gateway_enrollments_lapsed",
            "Enrollments that waited their whole retention period without a matching record.", registry=registry,
        )
        self._index_labels: set[tuple[str, str]] = set()
        self.registry_version = Gauge(
            "transfer_gateway_registry_version", "The version of the agency registry in force in this process.",
            registry=registry,
        )
        self.registry_reloads = Counter(
            "transfer_gateway_registry_reloads",
            "Registry reloads (SIGHUP, Admin.ReloadRegistry, a newer version from the store), by result:"
            " loaded, unchanged, refused.", ["result"], registry=registry,
        )
        self.key_expiry = Gauge(
            "transfer_gateway_key_expiry_seconds",
            "Seconds until a registry signing key's window ends (not_after or revoked_at; negative once ended);"
            " keys without an end are not listed.", ["owner", "key_id"], registry=registry,
        )
        self.signing_coverage = Gauge(
            "transfer_gateway_signing_coverage_seconds",
            "Seconds until an owner (the gateway, a platform) has no registry key left to sign with: the latest end"
            " among its keys not yet ended; owners with a key without end are not listed.", ["owner"],
            registry=registry,
        )
        self.certificate_expiry = Gauge(
            "transfer_gateway_certificate_expiry_seconds",
            "Seconds until a certificate's notAfter: the gateway's own (role server), its CA bundle (role ca) and"
            " each client certificate seen (role client, by owner).", ["role", "owner", "serial"], registry=registry,
        )
        self.calendar_version = Gauge(
            "transfer_gateway_calendar_version",
            "The version of the working-day calendar this replica counts on (the store's, once read).",
            registry=registry,
        )
        self._stage_labels: set[tuple[str, ...]] = set()
        self._total_labels: set[tuple[str, ...]] = set()
        self._escalation_labels: set[tuple[str, str]] = set()
        self._fund_labels: set[tuple[str, str, str]] = set()
        self._dead_labels: set[tuple[str, str, str]] = set()
        self._message_children: dict[tuple[str, str, str], Any] = {}

    def watch_log_cpu(self, read: Callable[[], float]) -> None:
        """Read the log's CPU time from the store at every scrape."""
        self.log_cpu.set_function(read)

    def log_checkpoint(self, tree_size: int, published_at: dt.datetime) -> None:
        """The latest checkpoint of the transparency log, as this process last saw it."""
        self.log_checkpoint_size.set(tree_size)
        self.log_checkpoint_time.set(published_at.timestamp())

    def count_message(self, kind: str, result: str, reason: str = "") -> None:
        """One submitted message in `transfer_gateway_messages_total` (children kept: once per message,
        `labels()` would cost more than the increment)."""
        key = (kind, result, reason)
        child = self._message_children.get(key)
        if child is None:
            child = self._message_children[key] = self.messages.labels(*key)
        child.inc()

    def observe_finished(self, outcome: AcceptOutcome, sla: Sla) -> None:
        """Record the time the stages a message finished took (nothing on a replay); whether on time
        is the store's running totals (`observe_stage_totals`)."""
        for record in outcome.finished_stages:
            assert record.finished_at is not None
            owner = record.owner or STAGES[record.stage].owner
            self.stage_duration.labels(
                record.stage, owner, owner_province(owner, outcome.outbound, outcome.inbound),
                province(outcome.outbound), province(outcome.inbound),
            ).observe(sla.calendar.elapsed(record.started_at, record.finished_at))

            if outcome.enrolled_at is not None and record.stage == "total":
                self.automatic_completion.labels(province(outcome.outbound), province(outcome.inbound)).observe(
                    sla.calendar.elapsed(outcome.enrolled_at, record.finished_at))

    def observe_rejudged(self, retimed: Retimed) -> None:
        """Count the finished stages a newer calendar judged otherwise."""
        self.rejudged.labels("on_time").inc(retimed.now_on_time)
        self.rejudged.labels("late").inc(retimed.now_late)

    def observe_stage_totals(self, totals: list[StageTotal]) -> None:
        seen: set[tuple[str, ...]] = set()
        for t in totals:
            labels = (str(t.stage), str(t.owner), t.owner_province, t.outbound_province, t.inbound_province,
                      str(t.result))
            seen.add(labels)
            self.stages_finished.labels(*labels).set(t.stages)
        for gone in self._total_labels - seen:
            self.stages_finished.labels(*gone).set(0)
        self._total_labels |= seen

    def observe_escalations(self, escalations: list[Escalation]) -> None:
        seen = set()
        for e in escalations:
            seen.add((e.outbound_province, e.inbound_province))
            self.requests_escalated.labels(e.outbound_province, e.inbound_province).set(e.requests)
        for labels in self._escalation_labels - seen:
            self.requests_escalated.labels(*labels).set(0)
        self._escalation_labels |= seen

    def observe_opened(self, outcome: AcceptOutcome) -> None:
        """Count a case its message opened, by channel (nothing for any other message)."""
        if outcome.opened:
            self.cases_opened.labels(province(outcome.outbound), province(outcome.inbound),
                                     CHANNELS.get(outcome.channel, "outbound")).inc()

    def observe_index(self, counts: list[IndexCount], current_key_id: str | None) -> None:
        """Set the index gauges from a store reading (entries under a secret other than
        `current_key_id` are stale); kinds and key ids no longer seen read 0."""
        seen = set()
        self.index_stale.set(sum(c.entries for c in counts if c.key_id != current_key_id))
        if current_key_id is not None:  # an empty index under the current secret reads 0, not nothing
            for kind in ("record", "enrollment", "case"):
                seen.add((kind, current_key_id))
                self.index_entries.labels(kind, current_key_id).set(0)
        for c in counts:
            seen.add((c.kind, c.key_id))
            self.index_entries.labels(c.kind, c.key_id).set(c.entries)
        for labels in self._index_labels - seen:
            self.index_entries.labels(*labels).set(0)
        self._index_labels |= seen

    def observe_stages(self, counts: list[StageCount]) -> None:
        """Set the open/overdue/due-soon gauges from a store reading; label sets no longer seen read 0."""
        seen: set[tuple[str, ...]] = set()
        for c in counts:
            labels = (str(c.stage), str(c.owner), c.owner_province, c.outbound_province, c.inbound_province)
            seen.add(labels)
            self.cases_open.labels(*labels).set(c.open)
            self.cases_overdue.labels(*labels).set(c.overdue)
            self.cases_due_soon.labels(*labels).set(c.due_soon)
        for gone in self._stage_labels - seen:
            for gauge in (self.cases_open, self.cases_overdue, self.cases_due_soon):
                gauge.labels(*gone).set(0)
        self._stage_labels |= seen

    def observe_funds(self, lines: list[SettlementLine]) -> None:
        seen = set()
        for line in lines:
            pair = (line.outbound_province, line.inbound_province)
            for status, fen in (("sent", line.sent_fen), ("in_flight", line.in_flight_fen), ("held", line.held_fen),
                                ("credited", line.credited_fen), ("rejected", line.rejected_fen),
                                ("returned", line.returned_fen), ("awaiting_return", line.awaiting_return_fen)):
                self.funds.labels(status, *pair).set(fen)
                seen.add((status, *pair))
        for labels in self._fund_labels - seen:
            self.funds.labels(*labels).set(0)
        self._fund_labels |= seen

    def observe_dead_letters(self, counts: list[DeadLetterCount]) -> None:
        """Set the dead letters by kind and reason from a store reading; label sets gone read 0."""
        seen = set()
        for c in counts:
            labels = (c.platform, kind_name(c.kind), c.reason)
            seen.add(labels)
            self.dead_letters_by_kind.labels(*labels).set(c.count)
        for labels in self._dead_labels - seen:
            self.dead_letters_by_kind.labels(*labels).set(0)
        self._dead_labels |= seen

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
