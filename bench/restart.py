"""How soon a worker killed with ``kill -9`` and restarted at once serves triggers again.

    python -m bench.restart            # after 'make install'; about 3 minutes

Two workers in one group on a Kafka and Redis of their own (as the soak's,
ports 59092/56379), probes on every partition (:mod:`bench.soak.probes`); one
worker is killed with SIGKILL and started again at once, as a supervisor does,
and the time until every partition answers a probe sent after the kill is
measured — for the old defaults (dynamic membership, a 60 s session), dynamic
membership with a 10 s session, and static membership (``group.instance.id``)
with a 10 s session, the defaults since 0.2 with the chart's pod names.
Writes ``bench/results/restart.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.compare import machine, say
from bench.soak.fleet import Services, Worker
from bench.soak.probes import Prober, TriggerLog
from nextbest.bootstrap import ensure_topics
from nextbest.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CASES = (("dynamic", 60.0), ("dynamic", 10.0), ("static", 10.0))


async def measure(services: Services, workdir: Path, membership: str, session: float) -> float:
    app_id = f"restart-{uuid.uuid4().hex[:6]}"
    settings = Settings(app_id=app_id, kafka_bootstrap=services.bootstrap)
    await ensure_topics(settings)

    def worker(name: str) -> Worker:
        env = {
            "NEXTBEST_APP_ID": app_id,
            "NEXTBEST_KAFKA_BOOTSTRAP": services.bootstrap,
            "NEXTBEST_REDIS_URL": services.redis_url,
            "NEXTBEST_DATA_DIR": str(workdir / app_id / name),
            "NEXTBEST_KAFKA_SESSION_TIMEOUT": f"{session:.0f}s",
        }
        if membership == "static":
            env["NEXTBEST_KAFKA_GROUP_INSTANCE_ID"] = f"{app_id}-{name}"
        return Worker(name, workdir / app_id, env)

    workers = [worker("w1"), worker("w2")]
    for each in workers:
        each.start()
    for each in workers:
        each.wait_ready(120)
    stop = asyncio.Event()
    triggers = TriggerLog(services.bootstrap, settings.channels)
    prober = Prober(services.bootstrap, settings.topic_partitions, interval=0.25)
    tasks = [asyncio.create_task(triggers.run(stop)), asyncio.create_task(prober.run(stop))]
    try:
        await asyncio.sleep(10)  # steady
        killed = time.time()
        workers[0].kill()  # SIGKILL
        workers[0].start()  # at once, as a supervisor does
        deadline = time.monotonic() + session + 60
        while time.monotonic() < deadline:
            again = prober.serving_again(killed, triggers)
            if again is not None:
                return again
            await asyncio.sleep(0.5)
        raise RuntimeError(f"{membership}/{session:.0f}s: not serving again within the deadline")
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for each in workers:
            each.kill()


async def run_all(workdir: Path) -> list[dict[str, Any]]:
    shutil.rmtree(workdir, ignore_errors=True)
    services = Services.make(workdir / "stack", 59092, 59093, 56379)
    services.down()
    services.up()
    results = []
    try:
        for membership, session in CASES:
            say(f"restart: {membership} membership, {session:.0f} s session")
            seconds = await measure(services, workdir, membership, session)
            say(f"  serving again after {seconds:.1f} s")
            results.append({"membership": membership, "session_s": session,
                            "serving_again_s": round(seconds, 1)})  # fmt: skip
    finally:
        services.down()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / ".dev" / "restart")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    results = asyncio.run(run_all(args.workdir))
    where = machine()
    lines = [
        f"kill -9 of one of two workers, restarted at once: seconds until every partition "
        f"serves triggers again; {where['cpus']} CPUs ({where['cpu_model']}).",
        "",
        "| membership | session timeout | serving again after |",
        "|---|---|---|",
    ]
    for row in results:
        lines.append(f"| {row['membership']} | {row['session_s']:.0f} s | "
                     f"{row['serving_again_s']:.1f} s |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": where, "results": results}
    (args.out / "restart.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    (args.out / "restart.md").write_text(text)


if __name__ == "__main__":
    main()
