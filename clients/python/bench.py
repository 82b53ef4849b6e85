#!/usr/bin/env python3
"""A small benchmark of the asyncio client against a running broker.

    python bench.py tcp://127.0.0.1:7878 [--requests 2000] [--concurrency 64] [--size 64]

An echo receiver runs in the same process (its own connection). Two measurements:
sequential round trips (p50/p99 in µs) and pipelined throughput (requests/s with N requests in
flight at once). Keep runs short: it is a smoke-level figure, not a load test.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import switchyard


def percentile(sorted_values: "list[float]", q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def main(url: str, requests: int, concurrency: int, size: int) -> None:
    channel = uuid.uuid4()
    body = b"x" * size
    async with await switchyard.connect(url, channel=channel) as worker, \
            await switchyard.connect(url, channel=channel) as client:

        async def echo() -> None:
            async for req in worker.requests(window=max(concurrency, 1)):
                await req.respond(await req.body())

        echo_task = asyncio.create_task(echo())
        for _ in range(100):  # warm-up
            await client.request(body, timeout=5)

        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            await client.request(body, timeout=5)
            samples.append((time.perf_counter() - started) * 1e6)
        samples.sort()

        remaining = requests * 2

        async def pipeline() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await client.request(body, timeout=5)

        started = time.perf_counter()
        await asyncio.gather(*(pipeline() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        echo_task.cancel()

    print(f"switchyard python client, body {size} B, {requests} sequential / "
          f"{requests * 2} pipelined requests")
    print(f"{'measurement':<34}{'value':>12}")
    print(f"{'sequential round trip p50 (us)':<34}{percentile(samples, 0.50):>12.0f}")
    print(f"{'sequential round trip p99 (us)':<34}{percentile(samples, 0.99):>12.0f}")
    print(f"{f'pipelined, {concurrency} in flight (req/s)':<34}{requests * 2 / elapsed:>12.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url", help="broker URL, e.g. tcp://127.0.0.1:7878")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.requests, args.concurrency, args.size))
