// browser.js: loads a page in headless Chromium (Debian's chromium,
// driven by playwright-core) and reports what it rendered, for the spec of
// the trace timeline (tests/trace_html_spec.lua).
//
//   node tests/support/browser.js PAGE.html SCREENSHOT.png [CLICK_NAME...]
//
// Waits for #timeline[data-ready], then prints one JSON object: bars (one
// per .bar: name, kind, depth, status, error, left and width in %),
// labels (the text of each row's label), requests (every URL the page
// asked for besides itself), console errors and page errors, and for each
// CLICK_NAME the side panel's text and its messages after clicking the
// first bar of that name.  Saves a full-page screenshot.  Exits 1 with a
// message when Chromium cannot start or the page does not render.
// CHROMIUM names the browser binary (default /usr/bin/chromium).
'use strict';
const path = require('path');
const { chromium } = require(path.join(__dirname, 'node_modules/playwright-core'));

async function main() {
  const [page_path, shot, ...clicks] = process.argv.slice(2);
  if (!page_path || !shot) throw new Error('usage: browser.js PAGE.html SCREENSHOT.png [CLICK_NAME...]');
  const profile = require('fs').mkdtempSync(path.join(require('os').tmpdir(), 'ah-chromium-'));
  // A fresh profile directory each time (playwright passes it as
  // --user-data-dir).
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1400, height: 900 },
    timeout: 60000,
  });
  try {
    const page = await browser.newPage();
    const url = 'file://' + path.resolve(page_path);
    const requests = [], errors = [];
    page.on('request', (r) => { if (r.url() !== url) requests.push(r.url()); });
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(url);
    await page.waitForSelector('#timeline[data-ready="1"]', { timeout: 20000 });
    const out = await page.evaluate(() => ({
      title: document.title,
      summary: document.getElementById('summary').textContent,
      bars: [...document.querySelectorAll('#timeline .bar')].map((b) => ({
        name: b.dataset.name, kind: b.dataset.kind, depth: Number(b.dataset.depth),
        status: b.dataset.status, error: b.classList.contains('error'),
        left: parseFloat(b.style.left), width: parseFloat(b.style.width), title: b.title,
        color: getComputedStyle(b).backgroundColor,
        visible: b.getBoundingClientRect().width > 0,
      })),
      labels: [...document.querySelectorAll('#timeline .row .lab')].map((l) => l.textContent),
      marks: document.querySelectorAll('#timeline .row .mark').length,
      injected: window.__injected === true,
      scripts_external: [...document.querySelectorAll('script[src],link[href],img[src]')].length,
    }));
    out.clicked = {};
    for (const name of clicks) {
      const bar = page.locator(`#timeline .bar[data-name=${JSON.stringify(name)}]`).first();
      await bar.click({ force: true });
      out.clicked[name] = await page.evaluate(() => ({
        text: document.getElementById('panel').textContent,
        messages: [...document.querySelectorAll('#panel .msg')].map((m) => ({
          role: m.dataset.role, text: m.querySelector('pre').textContent })),
      }));
    }
    await page.screenshot({ path: shot, fullPage: true });
    out.requests = requests;
    out.errors = errors;
    process.stdout.write(JSON.stringify(out) + '\n');
  } finally {
    await browser.close();
    require('fs').rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`browser.js: ${e && e.stack || e}\n`);
  process.exit(1);
});
