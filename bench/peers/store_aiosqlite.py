#!/usr/bin/python3
"""SQLite writes of small rows with aiosqlite on asyncio (the peer of
bench/store_client.lua).

    python3 bench/peers/store_aiosqlite.py PATH MODE ROWS CONCURRENCY BATCH

PATH is created as a fresh database (journal_mode=WAL, synchronous=NORMAL)
with the benchmark's table; everything goes through one aiosqlite
connection (one worker thread), which is how aiosqlite is meant to be used.

  post   one coroutine awaits `db.execute(INSERT, params)` for every row and
         `await db.commit()` after every BATCH rows and at the end: the
         usual way to write many rows when nobody waits for each one.
  exec   CONCURRENCY coroutines each loop `await db.execute(INSERT, params)`
         then `await db.commit()` until ROWS rows are written, so every row
         is committed before its coroutine continues.  They share the
         connection, and so its transaction: a commit also commits the
         inserts other coroutines made since the last one.

The timed window runs from the first insert to the last commit; CPU is user
+ system time of the process (both threads) over it.  Meanwhile another
coroutine sleeps 1 ms in a loop and records how late it wakes.  The row
count is checked afterwards.  Prints one line:

    client=aiosqlite mode=MODE rows=N seconds=S rows_per_s=R cpu=CPU lateness_p99_ms=P

Exit status 1 on a wrong final count, 2 on a usage error.
"""
import asyncio
import math
import resource
import sys
import time

import aiosqlite

SCHEMA = ("CREATE TABLE rows(id INTEGER PRIMARY KEY, agent INTEGER NOT NULL, "
          "step INTEGER NOT NULL, body TEXT NOT NULL)")
INSERT = "INSERT INTO rows(agent, step, body) VALUES (?, ?, ?)"


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def body(i):
    """The body every client writes for row i (64 bytes)."""
    head = f"{i % 64:06d}:{i:09d}:"
    return head + "x" * (64 - len(head))


def usage(msg):
    sys.stderr.write(f"store_aiosqlite.py: {msg}\n"
                     "usage: store_aiosqlite.py PATH post|exec ROWS CONCURRENCY BATCH\n")
    sys.exit(2)


async def main(path, mode, rows, conc, batch):
    clock = time.monotonic
    late = []
    state = {"stop": False}

    async def ticker():
        while not state["stop"]:
            t0 = clock()
            await asyncio.sleep(0.001)
            late.append((clock() - t0 - 0.001) * 1000.0)

    async with aiosqlite.connect(path) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute(SCHEMA)
        await db.commit()

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        c0, t0 = cpu_seconds(), clock()
        if mode == "post":
            for i in range(rows):
                await db.execute(INSERT, (i % 64, i, body(i)))
                if (i + 1) % batch == 0:
                    await db.commit()
            await db.commit()
        else:
            nxt = [0]

            async def writer():
                while nxt[0] < rows:
                    i = nxt[0]
                    nxt[0] += 1
                    await db.execute(INSERT, (i % 64, i, body(i)))
                    await db.commit()

            await asyncio.gather(*(writer() for _ in range(conc)))
        c1, t1 = cpu_seconds(), clock()
        state["stop"] = True
        await tick

        async with db.execute("SELECT count(*) FROM rows") as cur:
            (got,) = await cur.fetchone()
    if got != rows:
        sys.stderr.write(f"store_aiosqlite.py: expected {rows} rows, found {got}\n")
        sys.exit(1)

    late.sort()
    p99 = late[max(0, math.ceil(len(late) * 0.99) - 1)] if late else float("nan")
    elapsed = t1 - t0
    print(f"client=aiosqlite mode={mode} rows={rows} seconds={elapsed:.3f} "
          f"rows_per_s={rows / elapsed:.1f} cpu={c1 - c0:.3f} lateness_p99_ms={p99:.3f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 6:
        usage("expected PATH MODE ROWS CONCURRENCY BATCH")
    if sys.argv[2] not in ("post", "exec"):
        usage(f"MODE must be post or exec, got '{sys.argv[2]}'")
    try:
        nums = [int(a) for a in sys.argv[3:6]]
    except ValueError:
        usage("ROWS, CONCURRENCY and BATCH must be integers")
    if min(nums) < 1:
        usage("ROWS, CONCURRENCY and BATCH must be positive")
    asyncio.run(main(sys.argv[1], sys.argv[2], *nums))
