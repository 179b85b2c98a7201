"""``make soak``: load, faults on a seeded schedule, and the oracle's verdict.

    python -m bench.soak [--minutes 10] [--workers 3] [--rate R] [--seed 1] [--quick]

Runs on a Kafka and Redis of its own (ports 59092/56379, under ``.dev/soak``),
with 2-3 ``nextbest worker`` processes in one group (static membership unless
``--membership dynamic``). Prints the figures of the README's "Reliability"
table and writes ``bench/results/soak.{json,md}`` (``soak-quick.*`` for
``--quick``); exits 1 when a figure misses what it must be.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.compare import machine, say
from bench.soak import check
from bench.soak.fleet import Services, Worker
from bench.soak.load import Load, burst
from bench.soak.plan import KINDS, QUICK, Fault, Timing, schedule
from bench.soak.probes import Prober, TriggerLog
from bench.soak.watch import MemoryWatch, RedisWatch, current_within, lag
from nextbest.bootstrap import engine_config, ensure_topics, load_ruleset
from nextbest.core.engine import Engine
from nextbest.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PORTS = (59092, 59093, 56379)
PARTITIONS = 8
CART_AFTER, CHECKOUT_AFTER = 20.0, 15.0
GRACE = 20.0  # NEXTBEST_SHUTDOWN_TIMEOUT of the soak's workers
# the short form leaves out scaling (the integration tests rebalance), to stay within minutes
QUICK_KINDS = tuple(k for k in KINDS if k != "scale")


@dataclass
class Options:
    seconds: float
    workers: int
    rate: float
    customers: int
    seed: int
    static: bool
    quick: bool
    workdir: Path
    out: Path
    timing: Timing


@dataclass
class FaultResult:
    fault: Fault
    started: float = 0.0  # time.time()
    figures: dict[str, Any] = field(default_factory=dict)


class Soak:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.app_id = f"soak-{uuid.uuid4().hex[:6]}"
        self.services = Services.make(options.workdir / "stack", *PORTS)
        self.workers: list[Worker] = []
        self.extra = 0
        self.results: list[FaultResult] = []
        self.stop = asyncio.Event()
        self.load: Load | None = None
        self.prober: Prober | None = None
        self.triggers: TriggerLog | None = None
        self.redis_watch: RedisWatch | None = None
        self.memory = MemoryWatch(lambda: [w for w in self.workers if w.alive()])
        self.steady = 0  # records of lag an undisturbed run shows

    # --- set-up -------------------------------------------------------------------------

    def env(self, name: str, data: Path, *, instance: bool) -> dict[str, str]:
        env = {
            "NEXTBEST_APP_ID": self.app_id,
            "NEXTBEST_KAFKA_BOOTSTRAP": self.services.bootstrap,
            "NEXTBEST_REDIS_URL": self.services.redis_url,
            "NEXTBEST_DATA_DIR": str(data),
            "NEXTBEST_TOPIC_PARTITIONS": str(PARTITIONS),
            "NEXTBEST_KAFKA_SESSION_TIMEOUT": f"{self.options.timing.session_timeout:.0f}s",
            "NEXTBEST_CART_ABANDON_AFTER": f"{CART_AFTER:.0f}s",
            "NEXTBEST_CHECKOUT_STALL_AFTER": f"{CHECKOUT_AFTER:.0f}s",
            "NEXTBEST_SHUTDOWN_TIMEOUT": f"{GRACE:.0f}s",
        }
        if instance and self.options.static:
            env["NEXTBEST_KAFKA_GROUP_INSTANCE_ID"] = f"{self.app_id}-{name}"
        return env

    def worker(self, name: str) -> Worker:
        folder = self.options.workdir / name
        return Worker(name, folder, self.env(name, folder / "data", instance=True))

    def settings(self) -> Settings:
        return Settings(
            app_id=self.app_id,
            kafka_bootstrap=self.services.bootstrap,
            redis_url=self.services.redis_url,
            topic_partitions=PARTITIONS,
            cart_abandon_after=timedelta(seconds=CART_AFTER),
            checkout_stall_after=timedelta(seconds=CHECKOUT_AFTER),
        )

    async def start(self) -> None:
        self.services.down()
        shutil.rmtree(self.options.workdir, ignore_errors=True)
        self.options.workdir.mkdir(parents=True)
        self.services.up()
        await ensure_topics(self.settings())
        self.workers = [self.worker(f"w{n}") for n in range(1, self.options.workers + 1)]
        for worker in self.workers:
            worker.start()
        for worker in self.workers:
            worker.wait_ready(120)

    # --- faults -------------------------------------------------------------------------

    async def apply(self, fault: Fault) -> None:
        result = FaultResult(fault, time.time())
        self.results.append(result)
        figures = result.figures
        worker = self.workers[fault.target % len(self.workers)] if self.workers else None
        if fault.kind == "kill9" and worker is not None:
            worker.kill()
            await asyncio.sleep(0.5)  # a supervisor's restart: at once
            worker.start()
            figures["ready_s"] = await asyncio.to_thread(worker.wait_ready, 120)
        elif fault.kind == "pause" and worker is not None:
            worker.signal(signal.SIGSTOP)
            await asyncio.sleep(fault.hold)
            worker.signal(signal.SIGCONT)
        elif fault.kind == "scale":
            self.extra += 1
            added = self.worker(f"x{self.extra}")
            self.workers.append(added)
            added.start()
            figures["joined_ready_s"] = await asyncio.to_thread(added.wait_ready, 120)
            await asyncio.sleep(fault.hold)
            figures["left_at"] = time.time()
            figures["leave_exit_s"], figures["leave_status"] = await asyncio.to_thread(added.stop)
            self.workers.remove(added)
        elif fault.kind == "broker" and worker is not None:
            self.services.kill_broker()
            down = time.monotonic()
            await asyncio.sleep(0.5)
            # told to stop while the broker is gone: it must exit within its grace
            stopped = await asyncio.to_thread(worker.stop, GRACE + 30)
            figures["stop_without_broker_s"], figures["stop_status"] = stopped
            await asyncio.sleep(max(0.0, fault.hold - (time.monotonic() - down)))
            await asyncio.to_thread(self.services.start_broker)
            figures["broker_down_s"] = time.monotonic() - down
            figures["broker_back_at"] = time.time()
            worker.start()
            figures["ready_s"] = await asyncio.to_thread(worker.wait_ready, 180)
        elif fault.kind == "redis":
            await asyncio.to_thread(self.services.stop_redis)
            await asyncio.sleep(fault.hold)
            await asyncio.to_thread(self.services.start_redis)
            back = time.time()
            figures["redis_back_at"] = back
            assert self.load is not None
            wanted = self.load.valid_before(back - 1.0)
            figures["current_after_s"] = await current_within(
                self.services.redis_url, wanted, within=120
            )
        elif fault.kind == "burst":
            started = time.monotonic()
            figures["sent"] = await burst(self.services.bootstrap, fault.channel, fault.count)
            figures["seconds"] = time.monotonic() - started
        await asyncio.sleep(self.options.timing.recovery)  # its recovery window
        figures["lag_after_window"] = await self.window_lag()

    async def window_lag(self) -> int | None:
        topics = [f"events.{c}" for c in self.settings().channels] + [f"{self.app_id}-rekey"]
        return await lag(self.services.bootstrap, self.app_id, topics)

    # --- the run ------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        options = self.options
        await self.start()
        say(f"soak: {len(self.workers)} workers ready; load {options.rate:.0f}/s for "
            f"{options.seconds:.0f} s")  # fmt: skip
        channels = self.settings().channels
        self.load = Load(self.services.bootstrap, channels, options.rate, options.customers,
                         options.seed)  # fmt: skip
        self.prober = Prober(self.services.bootstrap, PARTITIONS)
        self.triggers = TriggerLog(self.services.bootstrap, channels)
        self.redis_watch = RedisWatch(self.services.redis_url)
        load_stop, probe_stop = asyncio.Event(), asyncio.Event()
        background = [
            asyncio.create_task(self.load.run(load_stop)),
            asyncio.create_task(self.prober.run(probe_stop)),
            asyncio.create_task(self.triggers.run(self.stop)),
            asyncio.create_task(self.redis_watch.run(self.stop)),
            asyncio.create_task(self.memory.run(self.stop)),
        ]
        steady: list[int | None] = []
        for _ in range(5):  # the lag of an undisturbed run, before any fault
            await asyncio.sleep(2)
            steady.append(await self.window_lag())
        self.steady = max(int(options.rate * 4), 3 * max((v or 0) for v in steady))
        began = time.time()
        kinds = QUICK_KINDS if options.quick else KINDS
        faults = schedule(options.seed, options.seconds, options.workers, options.timing,
                          kinds=kinds)  # fmt: skip
        running: list[asyncio.Task[None]] = []
        for fault in faults:
            await asyncio.sleep(max(0.0, began + fault.at - time.time()))
            say(f"soak: {fault.at:6.1f} s  {fault.kind} {fault}")
            running.append(asyncio.create_task(self.apply(fault)))
        await asyncio.sleep(max(0.0, began + options.seconds - time.time()))
        load_stop.set()
        probe_stop.set()
        await asyncio.gather(*running)
        say("soak: load stopped; waiting for the workers to catch up and deadlines to pass")
        caught_up = await self.drain(within=180)
        await asyncio.sleep(CART_AFTER + 5)
        until = datetime.now(UTC) - timedelta(seconds=3)
        await asyncio.sleep(2)
        self.stop.set()
        await asyncio.gather(*background, return_exceptions=True)
        stops = [await asyncio.to_thread(w.stop) for w in self.workers]
        restored_in, data = await self.fresh_recovery()
        say("soak: judging")
        rules = load_ruleset(self.settings())
        verdict = await check.judge(
            engine=Engine(engine_config(self.settings()), rules),
            bootstrap=self.services.bootstrap,
            redis_url=self.services.redis_url,
            app_id=self.app_id,
            channels=channels,
            data_dir=data,
            until=until,
        )
        return self.report(verdict, caught_up, stops, restored_in)

    async def drain(self, within: float) -> float | None:
        start = time.monotonic()
        while time.monotonic() - start < within:
            if await self.window_lag() == 0:
                return time.monotonic() - start
            await asyncio.sleep(1)
        return None

    async def fresh_recovery(self) -> tuple[float, Path]:
        """A new worker with an empty disk restores every partition; stopped, its table is read."""
        folder = self.options.workdir / "fresh"
        fresh = Worker("fresh", folder, self.env("fresh", folder / "data", instance=False))
        fresh.start()
        try:
            seconds = await asyncio.to_thread(fresh.wait_ready, 300)
        finally:
            await asyncio.to_thread(fresh.stop)
        return seconds, folder / "data"

    # --- the report ---------------------------------------------------------------------

    def report(
        self,
        verdict: check.Verdict,
        caught_up: float | None,
        stops: list[tuple[float, int | None]],
        restored_in: float,
    ) -> dict[str, Any]:
        assert self.prober is not None
        assert self.triggers is not None
        assert self.redis_watch is not None
        assert self.load is not None
        figures = dict(verdict.figures)
        steady = self.steady
        faults = []
        for result in self.results:
            fault, f = result.fault, dict(result.figures)
            since = f.pop("broker_back_at", None) or f.pop("left_at", None) or result.started
            f["serving_again_s"] = self.prober.serving_again(since, self.triggers)
            f.pop("redis_back_at", None)
            faults.append({"kind": fault.kind, "at": round(fault.at, 1), "hold": fault.hold, **f})
        growth = self.memory.growth(warmup=60.0, least=120.0)
        latencies = sorted(self.prober.latencies(self.triggers))
        figures.update(
            {
                "redis_versions_regressed": len(self.redis_watch.regressions),
                "redis_updates_seen": self.redis_watch.updates,
                "load_sent": self.load.sent,
                "load_errors": self.load.errors,
                "load_behind_max_s": round(self.load.behind, 2),
                "probes_sent": len(self.prober.probes),
                "probe_latency_p50_ms": _percentile(latencies, 0.5),
                "probe_latency_p99_ms": _percentile(latencies, 0.99),
                "caught_up_after_load_s": caught_up,
                "fresh_recovery_ready_s": round(restored_in, 1),
                "final_stop_s": [round(s, 1) for s, _ in stops],
                "restarts_while_starting": sum(w.restarts for w in self.workers),
                "rss_growth": [(n, round(g, 3), a, b) for n, g, a, b in growth],
                "steady_lag": steady,
            }
        )
        checks = _checks(figures, faults, steady)
        verdict.examples["redis_versions_regressed"] = [
            f"{customer}: {before} then {after}"
            for customer, before, after in self.redis_watch.regressions[:5]
        ]
        return {
            "machine": machine(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "options": {
                "seconds": self.options.seconds,
                "workers": self.options.workers,
                "rate": self.options.rate,
                "customers": self.options.customers,
                "seed": self.options.seed,
                "static": self.options.static,
            },
            "figures": figures,
            "faults": faults,
            "checks": checks,
            "examples": verdict.examples,
            "passed": all(c["ok"] for c in checks),
        }

    async def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.kill()
        with contextlib.suppress(Exception):
            self.services.down()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)


def _worst(faults: list[dict[str, Any]], kind: str, key: str) -> float | None:
    found = [f[key] for f in faults if f["kind"] == kind and f.get(key) is not None]
    missing = [f for f in faults if f["kind"] == kind and f.get(key) is None]
    if missing:
        return float("inf")
    return max(found) if found else None


def _checks(
    figures: dict[str, Any], faults: list[dict[str, Any]], steady: int
) -> list[dict[str, Any]]:
    """Each row of the README's table: the figure, what it must be, whether it is."""

    def row(name: str, value: Any, must: str, ok: bool) -> dict[str, Any]:
        return {"figure": name, "value": value, "must": must, "ok": bool(ok)}

    def within(value: float | None, bound: float) -> bool:
        return value is None or value <= bound  # None: no such fault in this run

    kill = _worst(faults, "kill9", "serving_again_s")
    broker = _worst(faults, "broker", "serving_again_s")
    redis = _worst(faults, "redis", "current_after_s")
    stop = _worst(faults, "broker", "stop_without_broker_s")
    share = figures["trigger_deliveries_repeated_share"]
    lags = [f.get("lag_after_window") for f in faults]
    rss = [g for _, g, _, _ in figures["rss_growth"]]
    return [
        row("valid input events lost", figures["events_lost"], "0", figures["events_lost"] == 0),
        row("events applied twice", figures["events_applied_twice"], "0",
            figures["events_applied_twice"] == 0),
        row("customers whose context differs (table / Redis)",
            f"{figures['contexts_differing_table']} / {figures['contexts_differing_redis']}", "0",
            figures["contexts_differing_table"] == 0 and figures["contexts_differing_redis"] == 0),
        row("triggers expected but never emitted", figures["triggers_missing"], "0",
            figures["triggers_missing"] == 0),
        row("a trigger id delivered more than once", f"{share:.3%}", "≤ 0.1 %", share <= 0.001),
        row("malformed records on events.deadletter with reason headers",
            f"{figures['malformed_records'] - figures['malformed_not_dead_lettered']} of "
            f"{figures['malformed_records']}", "all", figures["malformed_not_dead_lettered"] == 0),
        row("kill -9 → its partitions serve triggers again, s", kill, "≤ 10", within(kill, 10)),
        row("broker restart → triggers flow again, s", broker, "≤ 30", within(broker, 30)),
        row("Redis back after its outage → every context current, s", redis, "≤ 30",
            within(redis, 30)),
        row("Redis versions that went back", figures["redis_versions_regressed"], "0",
            figures["redis_versions_regressed"] == 0),
        row("a worker told to stop with the broker gone exits, s", stop, f"≤ {GRACE:.0f} + 5",
            within(stop, GRACE + 5)),
        row("worker RSS growth after warm-up", f"{max(rss):.1%}" if rss else "n/a (run too short)",
            "≤ 10 %", all(g <= 0.10 for g in rss)),
        row("consumer lag at the end of each fault's recovery window", lags,
            f"≤ {steady} (steady)",
            all(v is not None and v <= steady for v in lags)),
        row("the table a fresh worker restores equals the changelog (partitions unlike)",
            figures["restored_partitions_unlike_changelog"], "0",
            figures["restored_partitions_unlike_changelog"] == 0),
    ]  # fmt: skip


def render(report: dict[str, Any]) -> str:
    options, where = report["options"], report["machine"]
    lines = [
        f"Soak of {report['date']}: {options['seconds'] / 60:.1f} min, {options['workers']} "
        f"workers ({'static' if options['static'] else 'dynamic'} membership), "
        f"{options['rate']:.0f} events/s, {options['customers']:,} customers, seed "
        f"{options['seed']}; {where['cpus']} CPUs ({where['cpu_model']}), "
        f"{where['memory_gib']} GiB, Python {where['python']}.",
        "",
        "| figure | measured | must be | |",
        "|---|---|---|---|",
    ]
    for check_ in report["checks"]:
        value = check_["value"]
        if isinstance(value, float):
            value = "∞ (never)" if value == float("inf") else f"{value:.1f}"
        mark = "ok" if check_["ok"] else "**FAILED**"
        lines.append(f"| {check_['figure']} | {value} | {check_['must']} | {mark} |")
    lines += ["", "| fault | at, s | figures |", "|---|---|---|"]
    for fault in report["faults"]:
        shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in fault.items()
                 if k not in ("kind", "at")}  # fmt: skip
        lines.append(f"| {fault['kind']} | {fault['at']} | {shown} |")
    figures = report["figures"]
    lines += [
        "",
        f"Input: {figures['input_records']:,} records ({figures['valid_events']:,} valid events of "
        f"{figures['customers']:,} customers, {figures['malformed_records']:,} malformed); "
        f"triggers: {figures['triggers_expected']:,} expected, {figures['triggers_delivered']:,} "
        f"delivered ({figures['triggers_replaced']} replaced by a late arrival's decision, "
        f"{figures['triggers_extra']} not expected); probe trigger latency p50 "
        f"{figures['probe_latency_p50_ms']} ms, p99 {figures['probe_latency_p99_ms']} ms; a "
        f"fresh worker restored every partition in {figures['fresh_recovery_ready_s']} s.",
    ]
    return "\n".join(lines) + "\n"


def _default_rate() -> float:
    """60 % of one worker's max throughput in the latest full benchmark."""
    latest = ROOT / "bench" / "results" / "latest.json"
    with contextlib.suppress(OSError, KeyError, ValueError):
        summary = orjson.loads(latest.read_bytes())["summary"]["nextbest"]
        return round(0.6 * float(summary["events_per_s"]), -1)
    return 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float,
                        default=float(os.environ.get("SOAK_MINUTES", "10")))  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="the short form of make test")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None, help="events/s (default: 60%% of max)")
    parser.add_argument("--customers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--membership", choices=("static", "dynamic"), default="static")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".dev" / "soak")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("aiokafka", "asyncio"):  # the faults make the clients complain, as they should
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    quick = args.quick
    options = Options(
        seconds=135.0 if quick else args.minutes * 60,
        workers=args.workers or (2 if quick else 3),
        rate=args.rate or (150.0 if quick else _default_rate()),
        customers=args.customers or (5_000 if quick else 20_000),
        seed=args.seed,
        static=args.membership == "static",
        quick=quick,
        workdir=args.workdir,
        out=args.out,
        timing=QUICK if quick else Timing(),
    )
    soak = Soak(options)

    async def run() -> dict[str, Any]:
        try:
            return await soak.run()
        finally:
            await soak.close()

    report = asyncio.run(run())
    text = render(report)
    print(text)
    name = "soak-quick" if quick else "soak"
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / f"{name}.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    (options.out / f"{name}.md").write_text(text)
    raise SystemExit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
