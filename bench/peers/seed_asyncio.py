#!/usr/bin/python3
"""The seed asyncio agent, unchanged, plus an N-agent benchmark driver.

    /usr/bin/python3 seed_asyncio.py                      # behaves like the seed
    /usr/bin/python3 seed_asyncio.py --agents N --steps K # benchmark mode

Benchmark mode runs N agents concurrently, each calling
agent_loop("Analyze system performance anomalies") K times in sequence, waits
for every fire-and-forget memory write, then prints one line:

    agents=N steps=K wall=S ideal=S cpu=S maxrss_mb=M

With --idle-after S it then lets the event loop idle S seconds and prints
the resident size at that point:

    rss_after_idle_mb=M
"""
import asyncio
from typing import Dict, Any
# --- Tool implementations ---
async def web_search(query: str) -> str:
    await asyncio.sleep(0.8) # simulate network I/O
    return f"Search results for: {query}"
async def fetch_metrics() -> Dict[str, float]:
    await asyncio.sleep(0.5)
    return {"latency_ms": 120.5, "throughput": 89.2}
async def call_llm(prompt: str) -> str:
    await asyncio.sleep(1.2) # simulate LLM API call
    return f"LLM response to: {prompt}"
# --- Memory layer ---
async def store_memory(record: Dict[str, Any]) -> None:
    await asyncio.sleep(0.2) # async DB write
    # In production: asyncpg, motor, redis, etc.
# --- Decision logic ---
async def decide(observation: str) -> Dict[str, Any]:
    response = await call_llm(
        f"Given this observation, decide tools to call: {observation}"
    )
    return {
        "llm_response": response,
        "tools": ["search", "metrics"]
    }
# --- Tool execution ---
async def execute_tools(tools: list, query: str) -> Dict[str, Any]:
    tasks = []
    if "search" in tools:
        tasks.append(web_search(query))
    if "metrics" in tools:
        tasks.append(fetch_metrics())
    results = await asyncio.gather(*tasks)
    return {
        "search_result": results[0] if len(results) > 0 else None,
        "metrics": results[1] if len(results) > 1 else None,
    }
# --- Agent loop ---
async def agent_loop(observation: str) -> Dict[str, Any]:
    decision = await decide(observation)
    tool_results = await execute_tools(
        decision["tools"],
        query=observation
    )
    memory_record = {
        "observation": observation,
        "decision": decision,
        "tools": tool_results,
    }
    # Fire-and-forget background memory storage
    asyncio.create_task(store_memory(memory_record))
    return {
        "final_response": decision["llm_response"],
        "tools_used": tool_results
    }
# --- Entry point ---
async def main():
    result = await agent_loop("Analyze system performance anomalies")
    print(result)


# --- N-agent driver (benchmark mode) ---
import argparse
import os
import resource
import time

# Strong references to the fire-and-forget tasks, so that none is lost and the
# last memory writes can be awaited before exit. Each task drops out of the set
# when it finishes, so the set holds only the writes still in flight.
_background = set()
_create_task = asyncio.create_task


def _create_task_kept(coro, **kwargs):
    task = _create_task(coro, **kwargs)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def run_agent(steps: int) -> None:
    for _ in range(steps):
        await agent_loop("Analyze system performance anomalies")


async def bench(agents: int, steps: int) -> float:
    asyncio.create_task = _create_task_kept
    try:
        t0 = time.monotonic()
        await asyncio.gather(*(run_agent(steps) for _ in range(agents)))
        while _background:
            await asyncio.gather(*list(_background))
        return time.monotonic() - t0
    finally:
        asyncio.create_task = _create_task


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, help="concurrent agents (default 1)")
    parser.add_argument("--steps", type=int, help="agent_loop calls per agent (default 1)")
    parser.add_argument("--idle-after", type=float, default=0,
                        help="then idle this many seconds and print the resident size")
    args = parser.parse_args()
    if args.agents is None and args.steps is None:
        asyncio.run(main())
        return
    agents = args.agents if args.agents is not None else 1
    steps = args.steps if args.steps is not None else 1
    if agents < 1 or steps < 1:
        parser.error("--agents and --steps must be >= 1")
    wall = asyncio.run(bench(agents, steps))
    ideal = steps * 2.0 + 0.2  # per step 1.2 s LLM + max(0.8, 0.5) s tools; then the last 0.2 s write
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime
    maxrss_mb = ru.ru_maxrss / 1024  # Linux reports KB
    print(f"agents={agents} steps={steps} wall={wall:.3f} ideal={ideal:.3f} "
          f"cpu={cpu:.3f} maxrss_mb={maxrss_mb:.1f}", flush=True)
    if args.idle_after > 0:
        asyncio.run(asyncio.sleep(args.idle_after))
        with open("/proc/self/statm") as f:
            resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        print(f"rss_after_idle_mb={resident / 1048576:.1f}")


if __name__ == "__main__":
    cli()
