"""bench/peers/pg_asyncpg.py: bench/pg's workloads done the asyncpg way.

    python3 bench/peers/pg_asyncpg.py URL MODE N CONCURRENCY POOL

  select    CONCURRENCY coroutines loop pool.fetchrow of the point SELECT by
            primary key until N queries have returned
  insert    CONCURRENCY coroutines loop pool.execute of the single-row
            INSERT (each its own transaction) until N rows are in
  copy      N rows into bench_bulk with copy_records_to_table (COPY), the
            rows made by a generator as they are sent
  pipeline  N rows into bench_bulk in one transaction with executemany of
            the single-row INSERT, 1,000 rows at a time (asyncpg pipelines
            the statements of one executemany)

The pool has POOL connections (min_size = max_size), opened before the
timed window.  CPU is user + system time of this process over the window.
Prints: client=asyncpg mode=MODE n=N seconds=S per_s=R cpu=CPU
"""
import asyncio
import resource
import sys
import time

import asyncpg

BODY = "x" * 64


def cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def main(url, mode, n, conc, size):
    pool = await asyncpg.create_pool(url, min_size=size, max_size=size)
    async with pool.acquire() as c:
        if mode == "insert":
            await c.execute("TRUNCATE bench_rows")
        elif mode in ("copy", "pipeline"):
            await c.execute("TRUNCATE bench_bulk")
    done = 0

    async def workers(fn):
        async def worker(w):
            nonlocal done
            while done < n:
                done += 1
                await fn(done, w)
        await asyncio.gather(*(worker(w) for w in range(1, conc + 1)))

    t0, c0 = time.monotonic(), cpu()
    if mode == "select":
        async def one(i, w):
            k = i % 10000 + 1
            r = await pool.fetchrow("SELECT id, name, value FROM bench_items WHERE id = $1", k)
            if r["id"] != k:
                raise RuntimeError("wrong row")
        await workers(one)
    elif mode == "insert":
        async def ins(i, w):
            await pool.execute("INSERT INTO bench_rows(agent, step, body) VALUES ($1, $2, $3)", w, i, BODY)
        await workers(ins)
    elif mode == "copy":
        async with pool.acquire() as c:
            await c.copy_records_to_table("bench_bulk", columns=["agent", "step", "body"],
                                          records=((i % 64, i, BODY) for i in range(1, n + 1)))
    else:
        async with pool.acquire() as c:
            async with c.transaction():
                i = 0
                while i < n:
                    k = min(1000, n - i)
                    await c.executemany("INSERT INTO bench_bulk(agent, step, body) VALUES ($1, $2, $3)",
                                        [((j % 64), j, BODY) for j in range(i + 1, i + k + 1)])
                    i += k
    secs, used = time.monotonic() - t0, cpu() - c0
    async with pool.acquire() as c:
        if mode == "insert":
            got = await c.fetchval("SELECT count(*) FROM bench_rows")
        elif mode != "select":
            got = await c.fetchval("SELECT count(*) FROM bench_bulk")
        else:
            got = n
    await pool.close()
    if got != n:
        raise RuntimeError(f"expected {n} rows, found {got}")
    print(f"client=asyncpg mode={mode} n={n} seconds={secs:.4f} per_s={n / secs:.1f} cpu={used:.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[2] not in ("select", "insert", "copy", "pipeline"):
        sys.stderr.write("usage: pg_asyncpg.py URL select|insert|copy|pipeline N CONCURRENCY POOL\n")
        sys.exit(2)
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
