"""The benchmark's Markdown table: figures per arm, nextbest's ratios and targets."""

from __future__ import annotations

from typing import Any


def _number(value: float | None, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _fate(caught_up: bool, above_max: bool | None) -> str:
    if above_max:
        return " (above its max: not run)"
    return "" if caught_up else " (fell behind)"


def _bound(value: float | None) -> str:
    return "-" if value is None else f"≤ {value:,.1f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**not met**")


def render(report: dict[str, Any]) -> str:
    summary: dict[str, Any] = report["summary"]
    arms = list(summary)
    machine = report["machine"]
    plan = report["plan"]
    lines = [
        f"Benchmark of {report['when']}: {machine['cpus']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_gib']} GiB, Python {machine['python']}; "
        f"{machine['note']}. Medians of {plan['repeat']} repetition(s); "
        f"{plan['events']:,} backlogged records for throughput; "
        f"{plan['seconds']:.0f} s measured after {plan['warmup']:.0f} s warm-up per load.",
        "",
        "| measure | " + " | ".join(arms) + " |",
        "|---|" + "---|" * len(arms),
    ]

    def row(label: str, values: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + " |")

    row(
        "max throughput, events/s (min-max)",
        [
            f"{_number(summary[a]['events_per_s'])} "
            f"({_number(summary[a]['events_per_s_range'][0])}-"
            f"{_number(summary[a]['events_per_s_range'][1])})"
            for a in arms
        ],
    )
    row("CPU-seconds per 1,000 events", [_number(summary[a]["cpu_s_per_1k"], 3) for a in arms])
    row(
        "broker CPU-seconds per 1,000 events",
        [_number(summary[a]["kafka_cpu_s_per_1k"], 3) for a in arms],
    )
    row("peak RSS, MB", [_number(summary[a]["peak_rss_mb"]) for a in arms])
    for index in range(max(len(summary[a]["loads"]) for a in arms)):
        for arm in arms:
            if len(summary[arm]["loads"]) <= index:
                break
        else:
            label = summary[arms[0]]["loads"][index]["label"]

            def load(arm: str, key: str, i: int = index) -> Any:
                return summary[arm]["loads"][i].get(key)

            offered = [
                _number(load(a, "offered")) + _fate(load(a, "caught_up"), load(a, "above_max"))
                for a in arms
            ]
            row(f"load {label}: offered events/s", offered)
            for q in ("p50", "p99", "p99.9"):
                row(
                    f"load {label}: latency {q}, ms", [_number(load(a, f"{q}_ms"), 1) for a in arms]
                )
            row(
                f"load {label}: Redis mirror lag p99, ms (record sent -> Redis)",
                [_number(load(a, "mirror_p99_ms"), 1) for a in arms],
            )
            if any(load(a, "worker_mirror_p99_ms") is not None for a in arms):
                row(
                    f"load {label}: mirror lag p99, worker's histogram (change -> Redis), ms",
                    [_bound(load(a, "worker_mirror_p99_ms")) for a in arms],
                )
    if "recovery_records_per_s" in summary.get("nextbest", {}):
        recovery = summary["nextbest"]
        row(
            "changelog recovery, records/s (restore only)",
            [
                _number(recovery["recovery_records_per_s"])
                + f" ({recovery['recovery_records']:,.0f} records; ready after "
                f"{recovery['recovery_seconds_to_ready']:.1f} s)"
                if a == "nextbest"
                else "-"
                for a in arms
            ],
        )
    lines += ["", *_targets(summary)]
    return "\n".join(lines) + "\n"


def _targets(summary: dict[str, Any]) -> list[str]:
    ours = summary.get("nextbest")
    if ours is None:
        return []
    floor = summary.get("floor")
    peer = summary.get("quix")
    lines = ["| nextbest target | figure | verdict |", "|---|---|---|"]
    rate = ours["events_per_s"]
    if floor:
        r = _ratio(rate, floor["events_per_s"])
        lines.append(f"| throughput ≥ 0.5 x floor | {_number(r, 2)} x | {_verdict(r >= 0.5)} |")
    if peer:
        r = _ratio(rate, peer["events_per_s"])
        lines.append(f"| throughput ≥ 1.5 x Quix | {_number(r, 2)} x | {_verdict(r >= 1.5)} |")
    lines.append(f"| throughput ≥ 20,000 events/s | {_number(rate)} | {_verdict(rate >= 20_000)} |")
    half = _half(ours)
    floor_half = _half(floor) if floor else None
    if half and floor_half:
        for q, limit in (("p50", 1.5), ("p99", 2.5)):
            r = _ratio(half[f"{q}_ms"], floor_half[f"{q}_ms"])
            ok = None if r is None else r <= limit
            lines.append(
                f"| latency {q} at 50 % load ≤ {limit} x floor's | {_number(r, 2)} x | "
                f"{_verdict(ok)} |"
            )
    # the contract's 50 ms runs from the change in the worker to Redis: its own histogram
    worker = half.get("worker_mirror_p99_ms") if half else None
    ok = None if worker is None else worker <= 50
    lines.append(
        f"| Redis mirror lag p99 ≤ 50 ms (50 % load, worker's histogram) | {_bound(worker)} ms "
        f"| {_verdict(ok)} |"
    )
    mirror = half["mirror_p99_ms"] if half else None
    lines.append(
        f"| … end to end, record sent -> Redis (50 % load) | {_number(mirror, 1)} ms | "
        "(includes Kafka delivery) |"
    )
    if "recovery_records_per_s" in ours:
        recovery = ours["recovery_records_per_s"]
        lines.append(
            f"| changelog recovery ≥ 50,000 records/s | {_number(recovery)} | "
            f"{_verdict(recovery >= 50_000)} |"
        )
    return lines


def _half(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The load at 50 % of the arm's max, if it was run."""
    return next((x for x in entry["loads"] if x["label"].startswith("50%")), None)
