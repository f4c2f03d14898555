// The dashboard in a real browser: Debian's chromium driven by playwright-core, checked by axe-core.
// Run by crates/previewd/tests/browser.rs against a previewd it started (moto, fake GitHub, a dashboard
// token):
//   node dashboard.mjs BASE_URL TOKEN SCREENSHOT_DIR FAILED_ENV_ID look|redeploy
// `look`: the list, the pages, keep and a confirmed destroy; `redeploy` (while GitHub answers slowly, so
// the change is on screen long enough to see): the failed environment redeployed from its page.
// Exits non-zero, saying why, when anything is not as a person would expect; saves screenshots.
import { chromium } from 'playwright-core';
import { accessible, atWidths } from './a11y.mjs';

const [base, token, shots, failedId, phase] = process.argv.slice(2);
const fail = (why) => { console.error(`FAIL: ${why}`); process.exit(1); };
const WIDTHS = [1280, 390];

const browser = await chromium.launch({
  executablePath: process.env.PREVIEWD_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-component-update', '--no-first-run'],
});

// Zero critical or serious axe violations, and nothing wider than the screen, at each width.
async function checkLayout(page, what) {
  await atWidths(page, WIDTHS, async (width) => {
    const problems = await accessible(page, `${what} at ${width}px`);
    if (problems.length) fail(problems.join('\n'));
    const { sw, cw } = await page.evaluate(() => ({
      sw: document.documentElement.scrollWidth, cw: document.documentElement.clientWidth,
    }));
    if (sw > cw) {
      const wide = await page.evaluate((cw) => [...document.querySelectorAll('main *')]
        .filter((e) => e.getBoundingClientRect().right > cw && !e.closest('details:not([open])'))
        .slice(-3).map((e) => `${e.tagName.toLowerCase()}: ${e.outerHTML.slice(0, 160)}`), cw);
      fail(`${what} is wider than a ${width}px screen: ${sw}px, for ${wide.join(' | ')}`);
    }
    await page.screenshot({ path: `${shots}/${what.replace(/\W+/g, '-')}-${width}.png`, fullPage: true });
  });
  await page.setViewportSize({ width: WIDTHS[0], height: 900 });
}

// An environment's id by its branch, from the list.
const idOf = (page, branch) => page.locator('tr[data-env]').evaluateAll(
  (trs, b) => trs.find((t) => t.dataset.branch === b)?.dataset.env, branch);

try {
  const context = await browser.newContext({ viewport: { width: WIDTHS[0], height: 900 } });
  const page = await context.newPage();
  // No script from a branch name may ever run, and nothing asks through a browser dialog: any dialog
  // is a failure.
  page.on('dialog', (d) => fail(`a dialog opened: ${d.message()}`));
  page.on('pageerror', (e) => fail(`a script error: ${e.message}`));

  // Signed out: the login form, not the list.
  await page.goto(base + '/');
  if (await page.locator('tr[data-env]').count() !== 0) fail('rows shown without the token');
  await page.fill('input[name=token]', token);
  await Promise.all([page.waitForNavigation(), page.click('button')]);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === 'previewd_session');
  if (!session || session.value.includes(token) || !session.httpOnly || session.sameSite !== 'Strict') {
    fail(`the session cookie is not as it should be: ${JSON.stringify(cookies)}`);
  }

  if (phase === 'redeploy') {
    await page.goto(`${base}/environments/${failedId}`);
  // Redeploy the failed environment; its status changes on the page without a reload.
    let reloaded = false;
    page.on('framenavigated', () => { reloaded = true; });
    await page.click('button[data-action=redeploy]');
    await page.waitForFunction(() => document.querySelector('#status').innerText !== 'failed', null, { timeout: 30000 });
    if (reloaded) fail('the page reloaded');
    if (await page.locator('#problem').isVisible()) fail('what went wrong is still shown after the redeploy');
    await page.screenshot({ path: `${shots}/redeployed.png`, fullPage: true });
    console.log('ok: redeployed without a reload');
    process.exit(0);
  }

  // The list: every environment, hostile names as text.
  await page.waitForSelector('tr[data-env]');
  const rows = await page.locator('tr[data-env]').count();
  if (rows < 4) fail(`expected at least 4 rows, saw ${rows}`);
  const text = await page.locator('#rows').innerText();
  if (!text.includes('<img/src=x/onerror=alert(1)>')) fail(`the hostile branch is not shown as text: ${text}`);
  if (!text.includes('rtl/\u202Eevil')) fail('the right-to-left branch is not shown as it is named');
  if (await page.locator('#rows img').count() !== 0) fail('markup from a branch name became an element');
  // What a person needs first: how many are ready, failed, on their way; the reaper's pass below.
  const summary = await page.locator('#summary').innerText();
  const counts = summary.match(/(\d+) ready · (\d+) failed · (\d+) on their way/);
  if (!counts || Number(counts[1]) < 2 || Number(counts[2]) < 1) fail(`the summary says: ${summary}`);
  if (!(await page.locator('footer .reaper').count())) fail('the reaper\'s pass is not below the list');
  const paging = await page.locator('nav').innerText();
  if (!/\b\d+ environments?\b/.test(paging) || /\b1 environments\b/.test(paging)) fail(`paging says: ${paging}`);
  // Each row: its pull request and who opened it, the whole error.
  const login = page.locator('tr[data-branch="feature/login"]');
  const pr = await login.locator('td[data-label="Pull request"]').innerText();
  if (!/#7 by acme/.test(pr)) fail(`feature/login's pull request is not shown with its author: ${pr}`);
  const broken = await page.locator(`tr[data-env="${failedId}"] td.error`).innerText();
  if (!broken.includes('.previewd.toml') || broken.length < 80) fail(`the error is cut: ${broken}`);
  await checkLayout(page, 'list');

  // On a phone, each environment's status is on the screen, not off to its right.
  await page.setViewportSize({ width: 390, height: 900 });
  const statusBox = await page.locator('tr[data-env] td[data-label=Status]').first().boundingBox();
  if (!statusBox || statusBox.x + statusBox.width > 390) fail(`the status is off a phone's screen: ${JSON.stringify(statusBox)}`);
  await page.setViewportSize({ width: WIDTHS[0], height: 900 });

  // A focused link survives the live refresh that replaces its row (kept meanwhile, through the API),
  // and the change is announced.
  const link = page.locator('tr[data-branch="feature/login"] td[data-label=Branch] a');
  await link.focus();
  const href = await link.getAttribute('href');
  const before = await page.locator('tr[data-branch="feature/login"]').elementHandle();
  const rowId = await before.evaluate((tr) => tr.dataset.env);
  const kept = await page.request.post(`${base}/api/environments/${rowId}/keep`);
  if (kept.status() !== 202) fail(`keep through the API: ${kept.status()}`);
  await page.waitForFunction((b) => !b.isConnected, before, { timeout: 15000 });
  const focused = await page.evaluate(() => ({
    href: document.activeElement?.getAttribute('href'),
    inRows: document.getElementById('rows').contains(document.activeElement),
  }));
  if (focused.href !== href || !focused.inRows) fail(`the refresh took the focus: ${JSON.stringify(focused)}`);
  const unkept = await page.request.post(`${base}/api/environments/${rowId}/keep?value=false`);
  if (unkept.status() !== 202) fail(`keep off through the API: ${unkept.status()}`);
  // Once no longer kept, its relative times alone change: at the next refresh that moves them, the row
  // is still the same element.
  const row = 'tr[data-branch="feature/login"]';
  await page.waitForFunction((r) => !document.querySelector(`${r} td[data-label=Status]`).innerText.includes('kept'),
    row, { timeout: 15000 });
  const still = await page.locator(row).elementHandle();
  const shown = await still.evaluate((tr) => tr.querySelector('td[data-label="Last change"] time').textContent);
  await page.waitForFunction(([r, was]) => document.querySelector(`${r} td[data-label="Last change"] time`).textContent !== was,
    [row, shown], { timeout: 15000 });
  if (!(await still.evaluate((tr) => tr.isConnected))) fail('a row whose times alone changed was replaced');
  // Every page has its landmarks and a viewport a phone lays out at its own width.
  if (await page.locator('main').count() !== 1) fail('no main landmark');
  const viewport = await page.locator('meta[name=viewport]').getAttribute('content');
  if (!viewport || !viewport.includes('width=device-width')) fail(`viewport: ${viewport}`);

  // Filter by status, on the server; the controls are labelled.
  await page.getByRole('combobox', { name: /^Status/ }).selectOption('failed');
  await Promise.all([page.waitForNavigation(), page.click('form.filters button')]);
  const statuses = await page.locator('tr[data-env]').evaluateAll((trs) => trs.map((t) => t.dataset.status));
  if (statuses.length !== 1 || statuses[0] !== 'failed') fail(`filtered to failed, saw ${statuses}`);
  await page.goto(base + '/');
  const loginId = await idOf(page, 'feature/login');
  const hostileId = await idOf(page, '<img/src=x/onerror=alert(1)>');
  if (!loginId || !hostileId) fail('rows without their ids');

  // A failed environment's page leads with what went wrong and what to do.
  await page.goto(`${base}/environments/${failedId}`);
  const firstHeading = await page.locator('main h2').first().innerText();
  if (firstHeading !== 'What went wrong') fail(`the failed page leads with ${firstHeading}`);
  const problem = await page.locator('#problem').innerText();
  if (!problem.includes('.previewd.toml') || !problem.includes('What to do')) fail(`the problem says: ${problem}`);
  if (await page.locator('details:has(table) summary', { hasText: 'settings' }).count() !== 1) fail('the settings are not folded');
  await checkLayout(page, 'failed environment');

  // Destroy asks first; cancelling changes nothing.
  await page.click('button[data-confirm=destroy]');
  if (!(await page.locator('#confirm-destroy').isVisible())) fail('destroy did not ask to be confirmed');
  const active = await page.evaluate(() => document.activeElement?.textContent);
  if (active !== 'Destroy now') fail(`the confirmation is not focused: ${active}`);
  await page.click('#confirm-destroy button[data-cancel]');
  if (await page.locator('#confirm-destroy').isVisible()) fail('cancel did not close the confirmation');
  if (await page.locator('#status').innerText() !== 'failed') fail('cancelling a destroy changed something');

  // Keep, then the page offers to stop keeping.
  await page.goto(`${base}/environments/${hostileId}`);
  await checkLayout(page, 'ready environment');
  await page.click('button[data-action=keep]');
  await page.waitForFunction(() => document.getElementById('action-result').textContent.includes('recorded'));
  if (await page.locator('button[data-action=keep]').innerText() !== 'Stop keeping') fail('keep did not turn into stop keeping');
  await page.reload();
  if (await page.locator('button[data-action=keep][data-query="?value=false"]', { hasText: 'Stop keeping' }).count() !== 1) {
    fail('a kept environment does not offer to stop keeping');
  }

  // Destroy, confirmed: the teardown begins (browser.rs waits for its end and looks at the page then).
  await page.goto(`${base}/environments/${loginId}`);
  await page.click('button[data-confirm=destroy]');
  await page.click('#confirm-destroy button[data-action=destroy]');
  await page.waitForFunction(() => document.getElementById('action-result').textContent.includes('recorded'));
  await page.waitForFunction(() => document.querySelector('#status').innerText !== 'ready', null, { timeout: 60000 });
  console.log(`ok: ${rows} rows, accessible at ${WIDTHS.join(' and ')} px, focus kept, filtered, signed in, kept, destroyed`);
} finally {
  await browser.close();
}
