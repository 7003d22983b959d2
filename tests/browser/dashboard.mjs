// Drives the pgwake dashboard in headless Chromium for tests/dashboard_browser.rs,
// which seeds the database, serves the dashboard and runs:
//
//   node tests/browser/dashboard.mjs <base-url> <read-only-base-url>
//
// Chromium is the system's (PGWAKE_CHROMIUM, else /usr/bin/chromium), driven by
// playwright-core; Playwright's own browsers are never downloaded. Exits 0 when
// every check passed, 1 with the failed check on stderr otherwise.
// PGWAKE_SCREENSHOTS=<dir> saves a full-page PNG of each page into <dir>.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, readOnlyBase] = process.argv.slice(2);
if (!base || !readOnlyBase) {
  console.error('usage: node dashboard.mjs <base-url> <read-only-base-url>');
  process.exit(2);
}
const screenshots = process.env.PGWAKE_SCREENSHOTS || '';
const SCRIPT_ID = '<script>alert(1)</script>';
const IMG_PAYLOAD = '<img src=x onerror=alert(2)>';

class CheckFailed extends Error {}

function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

const started = Date.now();

function step(message) {
  console.log(`ok (${((Date.now() - started) / 1000).toFixed(1)} s): ${message}`);
}

/** Opens `url` and fails unless it answers 200. */
async function open(page, url) {
  const response = await page.goto(url);
  check(response && response.status() === 200, `GET ${url} answered ${response && response.status()}`);
}

async function screenshot(page, name) {
  if (!screenshots) return;
  mkdirSync(screenshots, { recursive: true });
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
  step(`screenshot ${name}.png`);
}

/** The texts of the cells of each row under `locator` (none for a row of headers). */
async function rows(locator) {
  return locator.locator('tr').evaluateAll((trs) =>
    trs.map((tr) => Array.from(tr.querySelectorAll('td')).map((td) => td.textContent.trim())),
  );
}

/** The instance ids the list on the page shows, in order. */
async function listedIds(page) {
  return page.locator('main table').first().locator('tr td:first-child a').allTextContents();
}

async function run(page, readOnlyPage, problems) {
  // The overview: the orders queue's row counts what was seeded.
  await open(page, `${base}/`);
  check((await page.locator('h1').textContent()) === 'Overview', 'the overview has no "Overview" heading');
  const queues = page.locator('main table').first();
  const byQueue = Object.fromEntries((await rows(queues)).filter((cells) => cells.length).map((c) => [c[0], c]));
  const orders = byQueue.orders;
  check(orders, `no row for queue orders on the overview: ${JSON.stringify(byQueue)}`);
  // queue, active, claimable, running, failing, activities ready, activities
  // running, later, finished (1 h), failed (1 h)
  check(orders[1] === '3', `orders: 3 active expected, the row reads ${orders}`);
  check(orders[6] === '1', `orders: 1 activity running expected, the row reads ${orders}`);
  check(orders[8] === '3' && orders[9] === '1', `orders: 3 finished, 1 failed expected, the row reads ${orders}`);
  check(byQueue.emails && byQueue.emails[8] === '3', `emails: 3 finished expected: ${byQueue.emails}`);
  const reportsRow = queues.locator('tr.stuck', { hasText: 'reports' });
  check((await reportsRow.count()) === 1, 'the reports queue, whose workflow task fails, is not highlighted');
  check((await page.locator('svg[role="img"]').count()) === 1, 'no chart on the overview');
  step(`overview: orders row ${orders.join(' | ')}`);
  await screenshot(page, 'overview');

  // The instances list, then filtered through the form.
  await page.getByRole('link', { name: 'Instances', exact: true }).click();
  await page.waitForURL(/\/instances$/);
  const all = await listedIds(page);
  check(all.length === 13, `13 instances expected in the list, got ${all.length}: ${all}`);
  const stuck = await page.locator('main table tr.stuck td:first-child a').allTextContents();
  check(stuck.length === 1 && stuck[0] === 'report-2026-12-06', `the failing report is not highlighted: ${stuck}`);
  step(`instances: ${all.length} listed, ${stuck} highlighted`);
  await screenshot(page, 'instances');

  await page.locator('form.filters select[name="state"]').selectOption('finished');
  await page.locator('form.filters input[name="queue"]').fill('orders');
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.waitForURL(/state=finished/);
  const finished = (await listedIds(page)).sort();
  check(
    JSON.stringify(finished) === JSON.stringify(['order-1041', 'order-1042', 'order-1043']),
    `finished orders expected, the filter listed ${finished}`,
  );
  // The failed order reads "failed", the others "finished" (the state column).
  const states = await page
    .locator('main table tr')
    .evaluateAll((rows) =>
      rows
        .map((row) => [...row.querySelectorAll('td')].map((cell) => cell.textContent.trim()))
        .filter((cells) => cells.length > 0)
        .map((cells) => `${cells[0]}=${cells.find((c) => c === 'failed' || c === 'finished')}`)
        .sort(),
    );
  check(
    JSON.stringify(states) ===
      JSON.stringify(['order-1041=finished', 'order-1042=finished', 'order-1043=failed']),
    `the finished orders' states read ${states}`,
  );
  check(
    (await page.locator('form.filters input[name="queue"]').inputValue()) === 'orders',
    'the form forgot the queue it filtered by',
  );
  await page.getByRole('link', { name: 'clear' }).click();
  await page.waitForURL(/\/instances$/);
  await page.locator('form.filters input[name="prefix"]').fill('welcome-');
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.waitForURL(/prefix=welcome-/);
  const welcomes = await listedIds(page);
  check(
    welcomes.length === 4 && welcomes.every((id) => id.startsWith('welcome-')),
    `the id prefix welcome- listed ${welcomes}`,
  );
  step(`filters: finished in orders ${finished}; prefix welcome- ${welcomes}`);

  // An instance's timeline, opened from the list.
  await page.getByRole('link', { name: 'clear' }).click();
  await page.waitForURL(/\/instances$/);
  await page.getByRole('link', { name: 'order-1041', exact: true }).click();
  await page.waitForURL(/\/instances\/order-1041$/);
  check((await page.locator('h1').textContent()) === 'Instance order-1041', 'not the page of order-1041');
  const events = (await rows(page.locator('table.timeline'))).filter((c) => c.length).map((cells) => cells[3]);
  const expected = [
    'WorkflowExecutionStarted',
    'ActivityScheduled',
    'ActivityCompleted',
    'ActivityScheduled',
    'ActivityCompleted',
    'WorkflowExecutionFinished',
  ];
  let next = 0;
  for (const event of events) if (event === expected[next]) next += 1;
  check(next === expected.length, `the timeline lacks ${expected[next]} (in order of ${expected}): ${events}`);
  check(
    (await page.locator('table.timeline').textContent()).includes('"tracking": "JD0146000"'),
    'the activity result is not pretty-printed in the timeline',
  );
  check((await page.locator('h2', { hasText: 'Result' }).count()) === 1, 'order-1041 shows no result');
  step(`timeline of order-1041: ${events.length} events`);
  await screenshot(page, 'instance');

  // Cancel an active instance: refused by the browser until confirmed.
  await open(page, `${base}/instances?prefix=return-`);
  await page.getByRole('link', { name: 'return-3001', exact: true }).click();
  await page.waitForURL(/\/instances\/return-3001$/);
  const cancel = page.locator('form.action', { has: page.getByRole('button', { name: 'Cancel', exact: true }) });
  await cancel.getByRole('button', { name: 'Cancel', exact: true }).click();
  check(
    (await cancel.locator('input[name="confirm"]').evaluate((box) => box.validity.valueMissing)) &&
      page.url().endsWith('/instances/return-3001'),
    'the cancel form was submitted without its confirmation',
  );
  await cancel.locator('input[name="confirm"]').check();
  await cancel.getByRole('button', { name: 'Cancel', exact: true }).click();
  await page.waitForURL(/\/instances\/return-3001\?done=cancel$/);
  check(
    (await page.locator('p.notice').textContent()) === 'Cancellation requested.',
    'no "Cancellation requested." after the cancel',
  );
  // The page the cancel lands on shows it pending, unless the returns
  // queue's worker has carried it out already (it serves that queue while
  // the browser runs).
  const stateOf = async () =>
    (await page.locator('main table').first().locator('tr', { hasText: 'state' }).locator('td').textContent()).trim();
  const pending = page.locator('h2', { hasText: 'Pending events' }).locator('xpath=following-sibling::table[1]');
  const pendingEvents = (await rows(pending)).filter((c) => c.length).map((cells) => cells[0]);
  check(
    pendingEvents.includes('WorkflowExecutionCanceled') || (await stateOf()) === 'canceled',
    `neither a pending cancellation nor canceled: pending ${pendingEvents}, state ${await stateOf()}`,
  );
  // Reloaded, the page shows the instance canceled.
  const deadline = Date.now() + 30_000;
  let state = await stateOf();
  while (state !== 'canceled' && Date.now() < deadline) {
    await page.waitForTimeout(200);
    await open(page, `${base}/instances/return-3001`);
    state = await stateOf();
  }
  check(state === 'canceled', `return-3001 reads "${state}" 30 s after its cancellation, not "canceled"`);
  check(
    (await page.locator('h2', { hasText: 'Result' }).locator('xpath=following-sibling::p[1]').textContent()) === 'Canceled.',
    'the canceled instance shows no "Canceled." result',
  );
  step(`canceled return-3001: pending ${pendingEvents}, then ${state}`);

  // Markup in an id and in a payload is text: no dialog, no element made.
  await open(page, `${base}/instances?queue=support`);
  const link = page.locator('main table tr td:first-child a');
  check((await link.count()) === 1 && (await link.textContent()) === SCRIPT_ID, 'the id is not shown as its text');
  await link.click();
  await page.waitForURL(/%3Cscript%3E/);
  await page.waitForLoadState('load');
  check((await page.locator('h1').textContent()) === `Instance ${SCRIPT_ID}`, 'the heading does not show the id as text');
  check((await page.locator('body').innerText()).includes(IMG_PAYLOAD), 'the payload is not shown as text');
  check((await page.locator('script').count()) === 0, 'a <script> element is in the page');
  check((await page.locator('img').count()) === 0, 'an <img> element is in the page');
  check(problems.length === 0, `on the page of ${SCRIPT_ID}: ${problems.join('; ')}`);
  step('markup in an id and a payload shown as text');

  // Read-only: the same instance without any action form.
  await open(readOnlyPage, `${readOnlyBase}/instances/order-1045`);
  check((await readOnlyPage.locator('h1').textContent()) === 'Instance order-1045', 'not the page of order-1045');
  check((await readOnlyPage.locator('form.action').count()) === 0, 'a read-only page shows an action form');
  check(
    (await readOnlyPage.locator('h2', { hasText: 'Activities in flight (1)' }).count()) === 1,
    'order-1045 shows no activity in flight',
  );
  step('read-only instance page has no actions');
  await screenshot(readOnlyPage, 'instance-read-only');
}

const browser = await chromium.launch({
  executablePath: process.env.PGWAKE_CHROMIUM || '/usr/bin/chromium',
  // As root in a container Chromium's sandbox cannot start.
  args: ['--no-sandbox'],
});
let failure = null;
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  context.setDefaultTimeout(15_000);
  const problems = [];
  const origins = new Set([new URL(base).origin, new URL(readOnlyBase).origin]);
  const watch = (page) => {
    page.on('dialog', (dialog) => {
      problems.push(`a ${dialog.type()} dialog fired: ${dialog.message()}`);
      dialog.dismiss().catch(() => {});
    });
    page.on('pageerror', (error) => problems.push(`a script error: ${error.message}`));
    return page;
  };
  // Nothing is fetched from anywhere but the dashboard.
  context.on('request', (request) => {
    const url = new URL(request.url());
    if (!origins.has(url.origin) && url.protocol !== 'data:') problems.push(`fetched ${request.url()}`);
  });
  const page = watch(await context.newPage());
  const readOnlyPage = watch(await context.newPage());
  await run(page, readOnlyPage, problems);
  check(problems.length === 0, problems.join('; '));
  step('no dialog, script error or outside fetch');
} catch (error) {
  failure = error;
} finally {
  await browser.close();
}
if (failure) {
  console.error(`FAILED: ${failure instanceof CheckFailed ? failure.message : failure.stack}`);
  process.exit(1);
}
console.log('all browser checks passed');
