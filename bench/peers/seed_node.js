#!/usr/bin/env node
// The seed agent in idiomatic Node.js (no npm packages), plus an N-agent driver.
//
//   node seed_node.js                       # one agent_loop, prints the result as JSON
//   node seed_node.js --agents N --steps K  # benchmark mode
//
// Benchmark mode runs N agents concurrently, each calling
// agentLoop("Analyze system performance anomalies") K times in sequence, waits
// for every fire-and-forget memory write, then prints one line:
//
//   agents=N steps=K wall=S ideal=S cpu=S maxrss_mb=M
//
// With --idle-after S it then lets the event loop idle S seconds and prints
// the resident size at that point:
//
//   rss_after_idle_mb=M
'use strict';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// --- Tool implementations ---
async function webSearch(query) {
  await sleep(800); // simulate network I/O
  return `Search results for: ${query}`;
}

async function fetchMetrics() {
  await sleep(500);
  return { latency_ms: 120.5, throughput: 89.2 };
}

async function callLlm(prompt) {
  await sleep(1200); // simulate LLM API call
  return `LLM response to: ${prompt}`;
}

// --- Memory layer ---
async function storeMemory(record) {
  await sleep(200); // async DB write
}

// Fire-and-forget writes still in flight; awaited before the benchmark ends.
const pendingWrites = new Set();

// --- Decision logic ---
async function decide(observation) {
  const response = await callLlm(
    `Given this observation, decide tools to call: ${observation}`
  );
  return { llm_response: response, tools: ['search', 'metrics'] };
}

// --- Tool execution ---
async function executeTools(tools, query) {
  const tasks = [];
  if (tools.includes('search')) tasks.push(webSearch(query));
  if (tools.includes('metrics')) tasks.push(fetchMetrics());
  const results = await Promise.all(tasks);
  return {
    search_result: results.length > 0 ? results[0] : null,
    metrics: results.length > 1 ? results[1] : null,
  };
}

// --- Agent loop ---
async function agentLoop(observation) {
  const decision = await decide(observation);
  const toolResults = await executeTools(decision.tools, observation);
  const memoryRecord = { observation, decision, tools: toolResults };
  // Fire-and-forget background memory storage
  const write = storeMemory(memoryRecord).finally(() => pendingWrites.delete(write));
  pendingWrites.add(write);
  return { final_response: decision.llm_response, tools_used: toolResults };
}

// --- Entry point ---
async function main() {
  const result = await agentLoop('Analyze system performance anomalies');
  console.log(JSON.stringify(result));
}

// --- N-agent driver (benchmark mode) ---
async function runAgent(steps) {
  for (let i = 0; i < steps; i++) {
    await agentLoop('Analyze system performance anomalies');
  }
}

async function bench(agents, steps, idleAfter) {
  const t0 = performance.now();
  const runs = [];
  for (let i = 0; i < agents; i++) runs.push(runAgent(steps));
  await Promise.all(runs);
  while (pendingWrites.size > 0) await Promise.all([...pendingWrites]);
  const wall = (performance.now() - t0) / 1000;

  const ideal = steps * 2.0 + 0.2; // per step 1.2 s LLM + max(0.8, 0.5) s tools; then the last 0.2 s write
  const cpu = process.cpuUsage(); // microseconds
  const cpuSec = (cpu.user + cpu.system) / 1e6;
  const maxrssMb = process.resourceUsage().maxRSS / 1024; // maxRSS is in KB
  console.log(
    `agents=${agents} steps=${steps} wall=${wall.toFixed(3)} ideal=${ideal.toFixed(3)} ` +
      `cpu=${cpuSec.toFixed(3)} maxrss_mb=${maxrssMb.toFixed(1)}`
  );
  if (idleAfter > 0) {
    await sleep(idleAfter * 1000);
    console.log(`rss_after_idle_mb=${(process.memoryUsage().rss / 1048576).toFixed(1)}`);
  }
}

function usage(msg) {
  if (msg) console.error(`seed_node.js: ${msg}`);
  console.error('usage: node seed_node.js [--agents N] [--steps K] [--idle-after S]');
  process.exit(2);
}

function cli(argv) {
  let agents = null;
  let steps = null;
  let idleAfter = 0;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '-h' || arg === '--help') usage();
    const m = /^--(agents|steps|idle-after)(?:=(.*))?$/.exec(arg);
    if (!m) usage(`unknown argument: ${arg}`);
    const value = m[2] !== undefined ? m[2] : argv[++i];
    const n = Number(value);
    if (m[1] === 'idle-after') {
      if (!(n >= 0)) usage('--idle-after needs a number of seconds >= 0');
      idleAfter = n;
      continue;
    }
    if (!Number.isInteger(n) || n < 1) usage(`--${m[1]} needs an integer >= 1`);
    if (m[1] === 'agents') agents = n;
    else steps = n;
  }
  if (agents === null && steps === null) return main();
  return bench(agents ?? 1, steps ?? 1, idleAfter);
}

cli(process.argv.slice(2)).catch((err) => {
  console.error(err);
  process.exit(1);
});
