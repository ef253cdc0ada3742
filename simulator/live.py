"""A live client population: users ask for rankings, see the top, click by hidden taste.

Each simulated visit calls ``Predict`` for a user with candidates drawn by popularity,
shows the first ``shown`` items, and reports what happened through ``Ingest``: an
impression per shown item and, drawn from the world's click probabilities, clicks with
dwell times, all carrying the ``request_id`` and ``variant`` of the ranking. A better
ranking puts items the user likes on top, so it earns more clicks: the live CTR of a
variant measures its model.

About once a second a visit is also a *freshness probe*: before its ``Ingest`` the user's
``impressions_1d`` is read at a fixed query time, and a second thread then polls
``GetFeatures`` until the new impressions show up; the time from the ``Ingest`` ack to
that moment is the feature freshness a client sees.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from saiki.serving.client import SaikiClient
from saiki.simulator.world import DEVICES, World, item_id, user_id
from saiki.v1 import (
    events_pb2,
    prediction_pb2,
)

PROBE_FEATURE = "impressions_1d"
PROBE_GIVE_UP_S = 30.0


@dataclass
class LiveStats:
    """What the population saw, per variant, and how fast serving answered."""

    visits: int = 0
    events_sent: int = 0
    impressions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    clicks: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    model_of: dict[str, str] = field(default_factory=dict)  # variant -> model version
    predict_ms: list[float] = field(default_factory=list)
    freshness_ms: list[float] = field(default_factory=list)
    probes_lost: int = 0
    errors: int = 0

    def ctr(self, variant: str) -> float:
        """Clicks per impression shown under a variant."""
        shown = self.impressions.get(variant, 0)
        return self.clicks.get(variant, 0) / shown if shown else 0.0

    def total_ctr(self) -> float:
        """Clicks per impression over every variant."""
        shown = sum(self.impressions.values())
        return sum(self.clicks.values()) / shown if shown else 0.0


@dataclass(frozen=True)
class _Probe:
    acked: float  # perf_counter at the Ingest ack
    user: str
    as_of: Timestamp
    target: float


def _timestamp(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


class LivePopulation:
    """Drives visits against a running server until stopped."""

    def __init__(
        self,
        world: World,
        address: str,
        *,
        candidates: int = 50,
        shown: int = 8,
        seed: int = 0,
        probe_interval_s: float = 1.0,
        token: str | None = None,
    ) -> None:
        self._world = world
        self._client = SaikiClient(address, token=token, timeout_s=5)
        self._candidates = candidates
        self._shown = shown
        self._rng = np.random.default_rng(seed)
        self._probe_interval_s = probe_interval_s
        self._last_probe = 0.0
        self._probes: queue.Queue[_Probe | None] = queue.Queue()
        self._prober = threading.Thread(target=self._watch_probes, daemon=True)
        self._prober.start()
        self.stats = LiveStats()
        self.events_acked = 0  # over the population's whole life, across phases
        self._lock = threading.Lock()

    def _probe_value(self, user: str, as_of: Timestamp) -> float:
        reply = self._client.get_features("user", [user], as_of_ms=as_of.ToMilliseconds())
        return float(reply.entities[0].values[PROBE_FEATURE])

    def _watch_probes(self) -> None:
        """Poll every outstanding probe every 20 ms until its value shows.

        All of them each round: one at a time, a probe waited behind the ones before it,
        and that wait was counted as its freshness (p95 grew past 2 s under load while
        each probe, on its own, showed in about half a second)."""
        outstanding: list[_Probe] = []
        closing = False
        while not closing or outstanding:
            try:
                while True:  # take every new probe; block only when there is none
                    probe = self._probes.get(block=not outstanding and not closing)
                    if probe is None:
                        closing = True
                    else:
                        outstanding.append(probe)
            except queue.Empty:
                pass
            still = []
            for probe in outstanding:
                try:
                    seen = self._probe_value(probe.user, probe.as_of) >= probe.target
                except grpc.RpcError:
                    seen = False
                waited = time.perf_counter() - probe.acked
                with self._lock:
                    if seen:
                        self.stats.freshness_ms.append(waited * 1000)
                    elif waited > PROBE_GIVE_UP_S:
                        self.stats.probes_lost += 1
                    else:
                        still.append(probe)
            outstanding = still
            if outstanding:
                time.sleep(0.02)

    def visit(self) -> None:
        """One user's visit: rank, show, react, report."""
        rng, world = self._rng, self._world
        activity = world.params["activity"]
        user = int(rng.choice(world.users, p=activity / activity.sum()))
        device = int(world.device_of(np.array([user]), rng)[0])
        items = np.unique(world.sample_items(self._candidates * 2, rng))[: self._candidates]
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        reply = self._client.predict(
            user_id(user),
            [item_id(i) for i in items.tolist()],
            device_id=DEVICES[device],
            request_id=request_id,
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        shown = np.array([int(s.item_id[1:]) for s in reply.items[: self._shown]], np.int64)
        now = int(time.time() * 1000)
        probability = world.click_probability(
            np.full(len(shown), user), shown, np.full(len(shown), device), np.full(len(shown), now)
        )
        clicked = rng.random(len(shown)) < probability
        dwell = world.dwell_ms(probability[clicked], rng)
        events = [
            self._event(f"{request_id}-i{n}", now + n, user, int(item), device, reply=reply)
            for n, item in enumerate(shown.tolist())
        ]
        for k, (item, time_spent) in enumerate(
            zip(shown[clicked].tolist(), dwell.tolist(), strict=True)
        ):
            event = self._event(
                f"{request_id}-c{item}",
                now + 500 + 300 * k,
                user,
                item,
                device,
                reply=reply,
                kind=events_pb2.CLICK,
            )
            event.dwell_ms = time_spent
            events.append(event)
        probe = None
        if started - self._last_probe >= self._probe_interval_s:
            self._last_probe = started
            # A query time after every event of this visit: only new arrivals change it.
            as_of = _timestamp(now + 5_000)
            probe = (as_of, self._probe_value(user_id(user), as_of) + len(shown))
        self._client.ingest(events, timeout_s=10)
        if probe is not None:
            self._probes.put(_Probe(time.perf_counter(), user_id(user), *probe))
        with self._lock:
            stats = self.stats
            stats.visits += 1
            stats.events_sent += len(events)
            self.events_acked += len(events)
            stats.impressions[reply.variant] += len(shown)
            stats.clicks[reply.variant] += int(clicked.sum())
            stats.model_of[reply.variant] = reply.model_version
            stats.predict_ms.append(elapsed_ms)

    @staticmethod
    def _event(
        event_id: str,
        when_ms: int,
        user: int,
        item: int,
        device: int,
        *,
        reply: prediction_pb2.PredictResponse,
        kind: events_pb2.EventType = events_pb2.IMPRESSION,
    ) -> events_pb2.Event:
        return events_pb2.Event(
            event_id=event_id,
            event_time=_timestamp(when_ms),
            user_id=user_id(user),
            item_id=item_id(item),
            device_id=DEVICES[device],
            event_type=kind,
            request_id=reply.request_id,
            variant=reply.variant,
        )

    def run(self, seconds: float, visits_per_second: float, stop: threading.Event) -> None:
        """Visit at a steady rate for ``seconds`` (or until ``stop``)."""
        deadline = time.perf_counter() + seconds
        interval = 1.0 / visits_per_second
        while time.perf_counter() < deadline and not stop.is_set():
            tick = time.perf_counter()
            try:
                self.visit()
            except grpc.RpcError:
                with self._lock:
                    self.stats.errors += 1
            time.sleep(max(0.0, interval - (time.perf_counter() - tick)))

    def snapshot(self) -> LiveStats:
        """A copy of the stats so far (safe to read while visits go on)."""
        with self._lock:
            stats = self.stats
            return LiveStats(
                stats.visits,
                stats.events_sent,
                dict(stats.impressions),
                dict(stats.clicks),
                dict(stats.model_of),
                list(stats.predict_ms),
                list(stats.freshness_ms),
                stats.probes_lost,
                stats.errors,
            )

    def reset(self) -> LiveStats:
        """Start new stats (a new phase); returns the old ones."""
        with self._lock:
            old, self.stats = self.stats, LiveStats()
            return old

    def close(self, drain_s: float = PROBE_GIVE_UP_S) -> None:
        """Let pending probes finish, then close the channel."""
        self._probes.put(None)
        self._prober.join(drain_s + 1)
        self._client.close()
