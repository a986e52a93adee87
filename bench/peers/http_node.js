#!/usr/bin/env node
// HTTP client throughput and latency with Node's global fetch (undici), the
// peer of bench/http_client.lua.  No npm packages.
//
//   node bench/peers/http_node.js URL CONCURRENCY SECONDS
//
// CONCURRENCY async workers each loop `await fetch(URL)` and read the whole
// body; the default global dispatcher keeps connections alive (one per
// request in flight, no pipelining).  After a short warm-up the measured
// window lasts SECONDS; requests that complete inside it are counted and
// their latencies kept.  CPU is process.cpuUsage() (user + system) over the
// window.  Prints one line:
//
//   client=node_fetch conc=C requests=N seconds=S rps=R cpu=CPU rps_per_cpu=X p99_ms=P errors=E
'use strict';

function usage(msg) {
  process.stderr.write(`http_node.js: ${msg}\nusage: http_node.js URL CONCURRENCY SECONDS\n`);
  process.exit(1);
}

const [url, concArg, secondsArg] = process.argv.slice(2);
if (url === undefined || concArg === undefined || secondsArg === undefined) {
  usage('expected URL CONCURRENCY SECONDS');
}
const conc = Number(concArg);
const seconds = Number(secondsArg);
if (!Number.isInteger(conc) || conc < 1) usage('CONCURRENCY must be a positive integer');
if (!(seconds > 0)) usage('SECONDS must be a positive number');
const warmup = Math.min(1.0, Math.max(0.2, seconds / 5));

const sleep = (s) => new Promise((r) => setTimeout(r, s * 1000));
const clock = () => performance.now(); // monotonic, ms

let measuring = false;
let stop = false;
let errors = 0;
let reported = 0;
const lat = [];

function report(what) {
  if (reported < 5) {
    reported++;
    process.stderr.write(`http_node.js: ${what}\n`);
  }
}

async function worker() {
  while (!stop) {
    const t0 = clock();
    let status = null;
    let err = null;
    try {
      const res = await fetch(url);
      await res.arrayBuffer();
      status = res.status;
    } catch (e) { // a failed request is counted, not fatal
      err = e;
    }
    const t1 = clock();
    if (measuring) {
      if (status === 200) {
        lat.push(t1 - t0);
      } else {
        errors++;
        report(err === null ? `status ${status}` : `error ${err} ${err.cause || ''}`);
      }
    } else if (err !== null) {
      report(`error during warm-up: ${err} ${err.cause || ''}`);
    }
  }
}

async function main() {
  const workers = [];
  for (let i = 0; i < conc; i++) workers.push(worker());
  await sleep(warmup);
  // One thread runs every worker: a request counts when its worker saw it
  // complete between these two points.
  const c0 = process.cpuUsage();
  const tBegin = clock();
  measuring = true;
  await sleep(seconds);
  const c1 = process.cpuUsage(c0);
  const tStop = clock();
  measuring = false;
  stop = true;

  const n = lat.length;
  const elapsed = (tStop - tBegin) / 1000;
  const cpu = (c1.user + c1.system) / 1e6;
  lat.sort((a, b) => a - b);
  const p99 = n ? lat[Math.max(0, Math.ceil(n * 0.99) - 1)] : NaN;
  const perCpu = cpu > 0 ? n / cpu : NaN;
  process.stdout.write(`client=node_fetch conc=${conc} requests=${n} seconds=${elapsed.toFixed(3)} ` +
    `rps=${(n / elapsed).toFixed(1)} cpu=${cpu.toFixed(3)} rps_per_cpu=${perCpu.toFixed(1)} ` +
    `p99_ms=${p99.toFixed(3)} errors=${errors}\n`);
  await Promise.all(workers);
}

main().catch((e) => {
  process.stderr.write(`http_node.js: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
