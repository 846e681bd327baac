"""The bench's verdicts and how they are shown: a table for people, one JSON line for machines.

Targets are printed beside the figures with PASS or MISS; a miss never fails the command, because
on a shared two-core machine one noisy run is not a regression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    ratio: str
    at_least: bool   # the ratio must be ≥ `bound` (else ≤)
    bound: float
    meaning: str
    store: str | None = None  # judged only in a run on this store (None: every run)

    def passes(self, value: float, result: dict[str, Any]) -> bool:
        if math.isnan(value):
            return False
        ok = value >= self.bound if self.at_least else value <= self.bound
        if self.ratio == "replay_vs_echo":
            ok = ok and result["double_movements"] == 0
        return ok

    def applies(self, result: dict[str, Any]) -> bool:
        return self.store in (None, result.get("store"))

    @property
    def text(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {self.bound:g}"


TARGETS = (
    Target("submit_vs_floor_server", True, 0.7, "submit req/s ÷ floors server req/s", store="sqlite"),
    Target("submit_p99_vs_floor_server", False, 1.5, "submit p99 ÷ floors server p99", store="sqlite"),
    Target("cpu_vs_floor_server", False, 1.5, "gateway CPU per message ÷ floors server CPU per request",
           store="sqlite"),
    Target("replay_vs_echo", True, 0.7, "replay req/s ÷ echo req/s, and zero double movements"),
    Target("large_store_vs_empty", True, 0.95, "submit req/s, large store ÷ empty store"),
    Target("rss_large_vs_empty", False, 1.25, "gateway peak RSS, large store ÷ empty store"),
    Target("log_cpu_share", False, 0.1, "the transparency log's CPU per accepted message (its own meter) ÷ the"
           " gateway's whole CPU per accepted message"),
    Target("isolation_victim_p99_vs_alone", False, 3.0,
           "a platform's p99 at a steady 50/s while another floods at 64 in flight ÷ its p99 alone"),
    Target("flood_rss_vs_idle", False, 2.0,
           "peak RSS while one platform sends 250 of the largest messages at once ÷ idle RSS"),
    Target("pg_submit_vs_sqlite", True, 0.6, "submit req/s, one PostgreSQL replica ÷ a SQLite gateway, same run",
           store="postgresql"),
    Target("pg_cpu_vs_sqlite", False, 2.0, "(gateway + PostgreSQL) CPU per accepted message ÷ the SQLite gateway's,"
           " same run", store="postgresql"),
    Target("workers_cpu_vs_one", False, 1.15, "gateway CPU per accepted message, serve --workers 2 (parent and both"
           " workers) ÷ one gateway's, same run", store="postgresql"),
)


# Reported, not judged: the gateway against the bare echo server (the stack's limit, which the
# floors server already sits well below), where the floors stand in situ, and what a flood the
# gateway does not pace does to another platform.
REFERENCES = (
    ("submit_vs_echo", "submit req/s ÷ echo req/s"),
    ("submit_p99_vs_echo", "submit p99 ÷ echo p99"),
    ("cpu_vs_floor", "gateway CPU per message ÷ (echo CPU per request + sign + verify + append)"),
    ("isolation_unpaced_p99_vs_alone", "the same victim's p99 beside the same flood with the flooder's rate limit"
                                       " lifted ÷ its p99 alone"),
    ("floor_server_vs_echo", "floors server req/s ÷ echo req/s"),
    ("floor_server_p99_vs_echo", "floors server p99 ÷ echo p99"),
    ("floor_server_cpu_vs_floor", "floors server CPU per message ÷ (echo CPU + sign + verify + append)"),
)


def ratio(numerator: float, denominator: float) -> float:
    if denominator == 0 or math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def verdicts(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target that applies to this run's store, judged."""
    return {t.ratio: {"value": result[t.ratio], "target": t.text, "pass": t.passes(result[t.ratio], result),
                      "meaning": t.meaning} for t in TARGETS if t.applies(result)}


def references(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The reference ratios of this run: the fixed ones, after the targets set for another store
    that this run measured all the same (the floors server's, on PostgreSQL)."""
    return [*((t.ratio, t.meaning) for t in TARGETS if not t.applies(result) and _measured(result.get(t.ratio))),
            *REFERENCES]


def _measured(value: float | None) -> bool:
    """A figure this run has: NaN in the result, null once it went through JSON, when it has not."""
    return value is not None and not math.isnan(value)


def _n(value: float | None, digits: int = 0) -> str:
    return f"{value:,.{digits}f}" if _measured(value) else "n/a"


def _isolation_lines(result: dict[str, Any]) -> list[str]:
    isolation = result.get("isolation")
    if not isolation:
        return []
    alone, flooded, flood, burst = (isolation["victim_alone"], isolation["victim_flooded"], isolation["flood"],
                                    isolation["burst"])
    unpaced = isolation["unpaced"]
    return [
        f"isolation: Zhejiang at {isolation['victim_rate_per_s']:g}/s, p50 {_n(alone['p50_ms'], 1)} ms p99 "
        f"{_n(alone['p99_ms'], 1)} ms alone, p50 {_n(flooded['p50_ms'], 1)} ms p99 {_n(flooded['p99_ms'], 1)} ms "
        f"while Jiangsu floods at {flood['in_flight']} in flight, paced to its rate ({_n(flood['req_per_s'])} req/s, "
        f"{flood['errors']} refused{', ran dry' if flood['cut_short'] else ''}); its rate lifted "
        f"({_n(unpaced['flood']['req_per_s'])} req/s): p50 {_n(unpaced['victim_flooded']['p50_ms'], 1)} ms p99 "
        f"{_n(unpaced['victim_flooded']['p99_ms'], 1)} ms",
        f"bursts: {burst['rounds']} × {burst['messages']} messages of {burst['message_bytes']:,} bytes (bad "
        f"signatures) at once; RSS {burst['idle_rss_mib']:.0f} MiB idle, peak {burst['peak_rss_mib']:.0f} MiB, "
        f"{burst['after_rss_mib']:.0f} MiB after; answers "
        + ", ".join(f"{code} {n}" for code, n in sorted(burst["answers"].items())),
    ]


def table(result: dict[str, Any]) -> str:
    """The human-readable report."""
    cfg, machine, versions = result["config"], result["machine"], result["versions"]
    echo, submit, replay = result["echo"], result["submit"], result["replay"]
    cases, scale, floors = result["cases"], result["scale"], result["floors"]
    pair = result.get("submit_two_replicas")
    engine = "PostgreSQL" if result.get("store") == "postgresql" else ""
    lines = [
        f"transfer-gateway bench ({cfg['mode']}, store {cfg['store']}) on {machine['cpu_count']} CPUs, "
        f"Python {versions['python']}, grpcio {versions['grpcio']}, protobuf {versions['protobuf']}, "
        f"cryptography {versions['cryptography']}, SQLite {versions['sqlite']}"
        + (f", PostgreSQL {versions['postgresql']}" if "postgresql" in versions else ""),
        f"{cfg['concurrency']} calls in flight over {cfg['channels']} mTLS channels, "
        f"{cfg['payload_bytes']}-byte messages, {cfg['window_seconds']:g} s windows after "
        f"{cfg['warmup_seconds']:g} s warm-up",
        "",
        f"{'':30}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'server CPU µs/req':>20}"
        + (f"{engine + ' CPU µs/req':>24}" if engine else ""),
    ]
    rows = [("echo (bare grpc.aio, mTLS)", echo), ("floors in situ", result["floor_server"]),
            ("submit (gateway, empty store)", submit),
            ("fund replay storm", replay), (f"submit, {scale['messages_loaded']:,} stored", scale["large"])]
    if pair:
        rows.append((f"submit, {pair['replicas']} replicas (sum)", pair))
    if result.get("submit_sqlite"):
        rows.append(("submit, SQLite gateway", result["submit_sqlite"]))
    workers = result.get("submit_two_workers")
    if workers:
        rows.append((f"submit, --workers {workers['workers']}", workers))
    for label, w in rows:
        lines.append(f"{label:30}{_n(w['req_per_s']):>10}{_n(w['p50_ms'], 1):>10}{_n(w['p99_ms'], 1):>10}"
                     f"{_n(w['cpu_us_per_request']):>20}"
                     + (f"{_n(w.get('engine_cpu_us_per_request') or math.nan):>24}" if engine else ""))
    lines += [
        "",
        f"cases end to end: {cases['completed']}/{cases['cases']} completed, {_n(cases['cases_per_s'], 1)} cases/s; "
        f"delivery (accepted → receiver's handler) p50 {_n(cases['delivery_p50_ms'], 1)} ms, "
        f"p99 {_n(cases['delivery_p99_ms'], 1)} ms over {cases['deliveries']} deliveries",
        f"replay storm: {replay['fund_transfers']} fund transfers replayed {replay['requests']:,} times; "
        f"double movements {replay['double_movements']}, missing {replay['missing_movements']}, "
        f"receipts differing from the original {replay['receipt_mismatches']}",
        *([f"two replicas on one store: {_n(pair['req_per_s'])} req/s together, "
           f"{_n(pair['vs_one_replica'], 2)}× one replica; receipts failing {pair['receipt_failures']}"]
          if pair else []),
        *([f"against a SQLite gateway in the same windows: {_n(result['pg_submit_vs_sqlite'], 2)}× its req/s, "
           f"{_n(result['pg_cpu_vs_sqlite'], 2)}× its CPU per message (gateway {_n(submit['cpu_us_per_request'])} + "
           f"{engine} {_n(submit.get('engine_cpu_us_per_request') or math.nan)} µs against "
           f"{_n(result['submit_sqlite']['cpu_us_per_request'])} µs)"] if result.get("submit_sqlite") else []),
        *([f"serve --workers {workers['workers']} behind one port: {_n(workers['req_per_s'])} req/s, "
           f"{_n(workers['vs_one_gateway'], 2)}× one gateway; {_n(result['workers_cpu_vs_one'], 2)}× its CPU per "
           f"message; Submits answered by each worker "
           f"{' / '.join(f'{n:,}' for n in workers['submits_by_worker'])}; receipts failing "
           f"{workers['receipt_failures']}"] if workers else []),
        f"scale: {scale['messages_loaded']:,} messages ({scale['cases_loaded']:,} cases) loaded in "
        f"{scale['load_seconds']:.1f} s, {scale['file_mib']:,.0f} MiB; "
        f"peak RSS {scale['empty']['peak_rss_mib']:.0f} MiB empty vs {scale['large']['peak_rss_mib']:.0f} MiB large",
        f"floors: sign {floors['sign_us']:.1f} µs, verify {floors['verify_us']:.1f} µs, durable append "
        f"{floors['durable_append_us']:.1f} µs CPU per row (fsync'd batches of {floors['durable_append_batch']}; "
        f"{floors['durable_append_wall_us']:.0f} µs wall per row, single-row commit "
        f"{floors['single_commit_wall_us']:.0f} µs wall), echo server {_n(echo['cpu_us_per_request'])} µs CPU per "
        f"request; gateway {_n(submit['cpu_us_per_request'])} µs CPU per accepted message",
        *_isolation_lines(result),
        "gateway CPU per accepted message by thread: " + ", ".join(
            f"{kind.replace('_', ' ')} {_n(us)} µs" for kind, us in submit["cpu_us_per_request_by_thread"].items())
        + f"; of which the transparency log {_n(submit['log_cpu_us_per_request'], 1)} µs",
        "",
        f"{'ratio':30}{'value':>8}  {'target':8}{'':6}meaning",
    ]
    for name, v in result["targets"].items():
        lines.append(f"{name:30}{_n(v['value'], 2):>8}  {v['target']:8}{'PASS' if v['pass'] else 'MISS':6}"
                     f"{v['meaning']}")
    lines += ["", f"{'reference':30}{'value':>8}  meaning"]
    lines += [f"{name:30}{_n(result[name], 2):>8}  {meaning}" for name, meaning in references(result)]
    runs = [("echo", echo), ("floors", result["floor_server"]), ("submit", submit), ("replay", replay),
            ("large", scale["large"])]
    runs += [("two replicas", pair)] if pair else []
    runs += [("SQLite", result["submit_sqlite"])] if result.get("submit_sqlite") else []
    problems = [f"{name}: {w['errors']} errors, e.g. {w['error_examples'][:1]}" for name, w in runs if w["errors"]]
    problems += [f"{name}: the workload ran out before the window's end" for name, w in
                 runs[1:] if w["cut_short"] and name != "replay"]
    problems += [f"cases: {e}" for e in cases["errors"][:3]]
    if problems:
        lines += ["", "problems:", *(f"  {p}" for p in problems)]
    lines.append(f"\n{result['seconds']:.0f} s in all")
    return "\n".join(lines)
