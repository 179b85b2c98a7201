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
    if any("switches_per_s" in summary[a] for a in arms):
        row(
            "every event a switch firing a trigger: events/s",
            [_number(summary[a].get("switches_per_s")) for a in arms],
        )
        row(
            "… CPU-seconds per 1,000 switches",
            [_number(summary[a].get("switches_cpu_s_per_1k"), 3) for a in arms],
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
    """Issue #12's targets, each a ratio to the floor (or Quix) measured side by side."""
    ours = summary.get("nextbest")
    if ours is None:
        return []
    floor = summary.get("floor")
    peer = summary.get("quix")
    lines = ["| nextbest target | figure | verdict |", "|---|---|---|"]

    def target(label: str, figure: float | None, ok: bool | None, unit: str = " x") -> None:
        shown = "-" if figure is None else f"{_number(figure, 2)}{unit}"
        lines.append(f"| {label} | {shown} | {_verdict(ok)} |")

    def at_most(figure: float | None, limit: float) -> bool | None:
        return None if figure is None else figure <= limit

    rate = ours["events_per_s"]
    if floor:
        r = _ratio(rate, floor["events_per_s"])
        target("max throughput ≥ 0.35 x floor", r, None if r is None else r >= 0.35)
    if peer:
        r = _ratio(rate, peer["events_per_s"])
        target("max throughput ≥ 2.5 x Quix", r, None if r is None else r >= 2.5)
    if floor:
        ours_1k, floor_1k = _load(ours, "1,000/s"), _load(floor, "1,000/s")
        if ours_1k and floor_1k:
            for q, limit in (("p50", 2.0), ("p99", 3.0)):
                r = _ratio(ours_1k[f"{q}_ms"], floor_1k[f"{q}_ms"])
                target(f"latency {q} at 1,000/s ≤ {limit:g} x floor's", r, at_most(r, limit))
        ours_5k, floor_5k = _load(ours, "5,000/s"), _load(floor, "5,000/s")
        if ours_5k and floor_5k:
            r = _ratio(ours_5k["p99_ms"], floor_5k["p99_ms"])
            served = ours_5k["caught_up"] and not ours_5k["above_max"]
            target("5,000/s caught up, p99 ≤ 4 x floor's", r, served and bool(at_most(r, 4.0)))
        half, floor_half = _half(ours), _half(floor)
        if half and floor_half:
            r = _ratio(half["p99_ms"], floor_half["p99_ms"])
            target("latency p99 at 50 % of own max ≤ 2.5 x floor's", r, at_most(r, 2.5))
        r = _ratio(ours["kafka_cpu_s_per_1k"], floor["kafka_cpu_s_per_1k"])
        target("broker CPU per 1,000 events ≤ 2.5 x floor's", r, at_most(r, 2.5))
        if "switches_per_s" in ours and "switches_per_s" in floor:
            r = _ratio(ours["switches_per_s"], floor["switches_per_s"])
            target(
                "every event a switch: max throughput ≥ 0.2 x floor", r, r is not None and r >= 0.2
            )
    # the contract's 50 ms runs from the change in the worker to Redis: its own histogram
    half = _half(ours)
    worker = half.get("worker_mirror_p99_ms") if half else None
    lines.append(
        f"| Redis mirror lag p99 ≤ 50 ms (50 % load, worker's histogram) | {_bound(worker)} ms "
        f"| {_verdict(at_most(worker, 50))} |"
    )
    mirror = half["mirror_p99_ms"] if half else None
    lines.append(
        f"| … end to end, record sent -> Redis (50 % load) | {_number(mirror, 1)} ms | "
        "(includes Kafka delivery) |"
    )
    if "recovery_records_per_s" in ours:
        recovery = ours["recovery_records_per_s"]
        target("changelog recovery ≥ 50,000 records/s", recovery, recovery >= 50_000, "")
    return lines


def _load(entry: dict[str, Any], label: str) -> dict[str, Any] | None:
    return next((x for x in entry["loads"] if x["label"] == label), None)


def _half(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The load at 50 % of the arm's max, if it was run."""
    return next((x for x in entry["loads"] if x["label"].startswith("50%")), None)
