"""What the prediction log and a shadow model cost ``Predict``.

Side by side in one run on the data of ``bench_predict`` (run it first, or this prepares
it): the same server (``--workers 2``, int8, feature cache on) started three times, with
``[serving] log_predictions = false``; with the log on and ``log_features_share = 0``
(every answer: request, user, device, every ranked item and score); and with the default
``log_features_share = 1`` (also the user's and each candidate's merged feature values);
and the same with a second version staged in shadow (``saiki models stage``: it scores
requests on the log's writer thread, after the answer is sent, within ``[models]
shadow_cpu`` of a core per server process). 100 candidates per
call, at 1 call in flight and at 8 (over 64 connections), in ``PREDICT_LOG_ROUNDS`` (4)
rounds of alternating order, samples pooled per row, each round's p50 printed beside it
and the log's cost given pooled and round by round, and as the servers' CPU time per
call (user + system of the server's processes over each row, the rounds' median): under
steal time and the other processes' noise, latency at saturation moves run to run by more
than the log costs; CPU per call moves less. Targets (issue 20):
logging costs at most 10% of the ``Predict`` p50; the shadow's cost is reported against
the log with features.

    python -m benchmarks.bench_predict_log
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import numpy as np
import orjson
import psutil

from benchmarks.bench_features import prepare
from benchmarks.bench_predict import PORT, SECONDS, cli, load
from benchmarks.common import DATA, conditions, fresh_dir, start_server
from saiki.core.prediction_files import PATTERN
from saiki.serving.monitor import read_predictions
from saiki.serving.registry import ModelRegistry

FULL, SHADOW = "log answers + features (share 1)", "the same + a shadow model"
ROUNDS = int(os.environ.get("PREDICT_LOG_ROUNDS", "4"))
CONNECTIONS = {1: 1, 8: 64}
SETTINGS = {
    "log off": {"SERVING_LOG_PREDICTIONS": "false"},
    "log answers only (share 0)": {"SERVING_LOG_FEATURES_SHARE": "0"},
    FULL: {"SERVING_LOG_FEATURES_SHARE": "1"},
    SHADOW: {"SERVING_LOG_FEATURES_SHARE": "1"},
}


async def measure(
    settings: dict[str, str], data: Path
) -> dict[int, tuple[list[float], int, float]]:
    # The kernel spreads the 8 connections over the 2 workers as it hashes them: all 8 on
    # one worker now and then, whose bound of 8 calls in flight then refused a call sent
    # before the server had counted the last one out (RESOURCE_EXHAUSTED stopped a run).
    # A bound above the load keeps every call admitted; it changes nothing below it.
    server = start_server(
        data, PORT, workers=2, SERVING_PRECISION="int8", SERVING_MAX_IN_FLIGHT="16", **settings
    )
    try:
        measured = {}
        for n in (1, 8):
            # 8 in flight over 64 connections: over 8, the kernel's split of the connections
            # between the two workers (as uneven as 7 to 1 a time in sixteen) moved a row's
            # p50 by more than the log costs
            before = server_cpu_s(server.pid)
            samples, rate = await load(f"127.0.0.1:{PORT}", n, CONNECTIONS[n])
            cpu_ms = (server_cpu_s(server.pid) - before) * 1000 / max(len(samples), 1)
            measured[n] = (samples, rate, cpu_ms)
        return measured
    finally:
        server.terminate()
        server.wait(60)


def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of the server and its worker processes so far: what a
    setting costs per call, which steal time and the other processes move less than
    latency."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        times = process.cpu_times()
        total += times.user + times.system
    return total


Rows = dict[str, dict[int, tuple[list[float], int, float]]]


def log_size(folder: Path) -> tuple[int, int, int, int]:
    """The log's bytes, its answers with features, the item vectors they name and the
    vectors written (each once per file, and again when it changed)."""
    answers = named = written = 0
    for path in folder.glob(PATTERN):
        for line in path.open("rb"):
            record = orjson.loads(line)
            if "vectors" in record:
                written += len(record["vector_slots"])
            elif "item_slots" in record:
                answers += 1
                named += len(record["item_slots"])
    return sum(p.stat().st_size for p in folder.glob(PATTERN)), answers, named, written


def run_rounds(
    data: Path, shadow: int
) -> tuple[Rows, dict[str, dict[int, list[float]]], list[dict[str, object]]]:
    """Every setting in every round; pooled samples, per-round p50s, shadowed answers."""
    shadowed_rounds: list[dict[str, object]] = []
    sizes = [0, 0, 0, 0]
    # Rounds in alternating order (forward, then backward, ...): a drift of the machine
    # over the run then weighs on every setting alike, and each row's per-round p50s
    # show the spread that a difference must beat.
    results: dict[str, dict[int, tuple[list[float], int, list[float]]]] = {}
    per_round: dict[str, dict[int, list[float]]] = {}
    for round_number in range(ROUNDS):
        order = list(SETTINGS.items())
        if round_number % 2:
            order.reverse()
        for name, env in order:
            shutil.rmtree(data / "serving", ignore_errors=True)
            if name == SHADOW:
                cli(data, "models", "stage", str(shadow))
            try:
                measured = asyncio.run(measure(env, data))
            finally:
                if name == SHADOW:
                    cli(data, "models", "stage", "--end")
            for flight, (samples, rate, cpu_ms) in measured.items():
                kept, total, cpu = results.setdefault(name, {}).get(flight, ([], 0, []))
                results[name][flight] = (kept + samples, total + rate, [*cpu, cpu_ms])
                per_round.setdefault(name, {}).setdefault(flight, []).append(
                    float(np.percentile(np.array(samples) * 1000, 50))
                )
            if name == FULL:
                sizes = [a + b for a, b in zip(sizes, log_size(data / "serving"), strict=True)]
            if name == SHADOW:
                shadowed_rounds = [
                    r for r in read_predictions(data / "serving", 0) if "shadow_ms" in r
                ]
    pooled = {
        name: {
            f: (samples, total // ROUNDS, float(np.median(cpu)))
            for f, (samples, total, cpu) in rows.items()
        }
        for name, rows in results.items()
    }
    size, answers, named, written = sizes
    print(
        f"log with features: {size / max(answers, 1) / 1000:.1f} KB per answer; "
        f"{written:,} of the {named:,} item vectors its answers name were written "
        f"({written / max(named, 1):.1%}: once per file and item, again when changed)"
    )
    return pooled, per_round, shadowed_rounds


def main() -> None:
    data = DATA / "features" / "data"
    if not (data / "views" / "CURRENT").exists():
        fresh_dir("features")
        prepare(data)
    if not (data / "models" / "registry.json").exists():
        cli(data, "train", "--promote-if-better")
    registry = ModelRegistry(data)
    production = registry.production()
    shadow = next((v.version for v in registry.versions() if v.version != production), None)
    if shadow is None:  # a second version to shadow: another seed, not promoted
        cli(data, "train", "--seed", "1")
        shadow = max(v.version for v in registry.versions())
    results, per_round, shadowed = run_rounds(data, shadow)

    def ms(samples: list[float], q: float) -> float:
        return float(np.percentile(np.array(samples) * 1000, q))

    print(f"# prediction log benchmark — {conditions()}")
    print(
        f"server: saiki serve --workers 2, int8, feature cache on; {SECONDS}s per row and "
        f"round, {ROUNDS} rounds in alternating order; 100 candidates per call; 8 in "
        f"flight over {CONNECTIONS[8]} connections"
    )
    print(
        f"{'setting':<36}{'in flight':>10}{'p50 ms':>8}{'p99 ms':>8}{'calls/s':>9}"
        f"{'CPU ms/call':>12}  p50 per round"
    )
    for name, by_flight in results.items():
        for flight, (samples, rate, cpu_ms) in by_flight.items():
            rounds = " ".join(f"{v:.2f}" for v in per_round[name][flight])
            print(
                f"{name:<36}{flight:>10}{ms(samples, 50):>8.2f}{ms(samples, 99):>8.2f}"
                f"{rate:>9}{cpu_ms:>12.3f}  {rounds}"
            )
    for flight in (1, 8):
        off = ms(results["log off"][flight][0], 50)
        full = ms(results[FULL][flight][0], 50)
        pairs = zip(per_round["log off"][flight], per_round[FULL][flight], strict=True)
        paired = [b / a - 1 for a, b in pairs]
        print(
            f"{flight} in flight: logging with features costs {(full - off) / off:+.1%} of "
            f"the p50 ({off:.2f} -> {full:.2f} ms; target <= 10%); round by round "
            f"{' '.join(f'{p:+.0%}' for p in paired)}, median {float(np.median(paired)):+.1%}"
        )
        cpu_off, cpu_full = results["log off"][flight][2], results[FULL][flight][2]
        print(
            f"{flight} in flight: logging with features costs the servers "
            f"{(cpu_full - cpu_off) / cpu_off:+.1%} CPU per call ({cpu_off:.3f} -> "
            f"{cpu_full:.3f} ms, medians of the rounds)"
        )
        with_shadow = results[SHADOW][flight][0]
        print(
            f"{flight} in flight: the shadow model adds {ms(with_shadow, 50) - full:+.2f} ms to "
            f"the p50, {ms(with_shadow, 99) - ms(results[FULL][flight][0], 99):+.2f} ms to the "
            "p99"
        )
    if shadowed:
        times = [float(str(r["shadow_ms"])) for r in shadowed]
        print(
            f"shadow v{shadow}: {len(shadowed)} requests scored on the writer thread, forward "
            f"p50 {np.percentile(times, 50):.2f} ms, p99 {np.percentile(times, 99):.2f} ms"
        )


if __name__ == "__main__":
    main()
