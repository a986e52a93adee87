#!/usr/bin/python3
"""HTTP client throughput and latency with aiohttp on asyncio (the peer of
bench/http_client.lua).

    python3 bench/peers/http_aiohttp.py URL CONCURRENCY SECONDS

CONCURRENCY worker coroutines share one ClientSession whose TCPConnector
keeps up to CONCURRENCY connections alive; each loops GET URL (reading the
whole body).  After a short warm-up the measured window lasts SECONDS;
requests that complete inside it are counted and their latencies kept.  CPU
is user + system time of this process over the window.  Prints one line:

    client=aiohttp conc=C requests=N seconds=S rps=R cpu=CPU rps_per_cpu=X p99_ms=P errors=E
"""
import asyncio
import math
import resource
import sys
import time

import aiohttp


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def usage(msg):
    sys.stderr.write(f"http_aiohttp.py: {msg}\nusage: http_aiohttp.py URL CONCURRENCY SECONDS\n")
    sys.exit(1)


async def main(url, conc, seconds):
    warmup = min(1.0, max(0.2, seconds / 5))
    state = {"measuring": False, "stop": False, "errors": 0, "reported": 0}
    lat = []
    clock = time.monotonic

    def report(what):
        if state["reported"] < 5:
            state["reported"] += 1
            sys.stderr.write(f"http_aiohttp.py: {what}\n")

    connector = aiohttp.TCPConnector(limit=conc, limit_per_host=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker():
            while not state["stop"]:
                t0 = clock()
                status, err = None, None
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        status = resp.status
                except Exception as e:  # a failed request is counted, not fatal
                    err = e
                t1 = clock()
                if state["measuring"]:
                    if status == 200:
                        lat.append((t1 - t0) * 1000.0)
                    else:
                        state["errors"] += 1
                        report(f"status {status}" if err is None else f"error {err!r}")
                elif err is not None:
                    report(f"error during warm-up: {err!r}")

        workers = [asyncio.create_task(worker()) for _ in range(conc)]
        await asyncio.sleep(warmup)
        # One thread runs every coroutine: a request counts when its worker
        # saw it complete between these two points.
        c0, t_begin = cpu_seconds(), clock()
        state["measuring"] = True
        await asyncio.sleep(seconds)
        c1, t_stop = cpu_seconds(), clock()
        state["measuring"], state["stop"] = False, True

        n = len(lat)
        elapsed = t_stop - t_begin
        cpu = c1 - c0
        lat.sort()
        p99 = lat[max(0, math.ceil(n * 0.99) - 1)] if n else float("nan")
        rps_per_cpu = n / cpu if cpu > 0 else float("nan")
        print(f"client=aiohttp conc={conc} requests={n} seconds={elapsed:.3f} rps={n / elapsed:.1f} "
              f"cpu={cpu:.3f} rps_per_cpu={rps_per_cpu:.1f} p99_ms={p99:.3f} errors={state['errors']}",
              flush=True)
        await asyncio.gather(*workers)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        usage("expected URL CONCURRENCY SECONDS")
    try:
        conc_arg = int(sys.argv[2])
        seconds_arg = float(sys.argv[3])
    except ValueError:
        usage("CONCURRENCY must be an integer and SECONDS a number")
    if conc_arg < 1 or not seconds_arg > 0:
        usage("CONCURRENCY and SECONDS must be positive")
    asyncio.run(main(sys.argv[1], conc_arg, seconds_arg))
