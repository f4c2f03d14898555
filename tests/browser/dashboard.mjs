// The dashboard in a real browser: Debian's chromium driven by playwright-core. Run by
// crates/previewd/tests/browser.rs against a previewd it started (moto, fake GitHub, a dashboard token):
//   node dashboard.mjs BASE_URL TOKEN SCREENSHOT_DIR FAILED_ENV_ID
// Exits non-zero, saying why, when anything is not as a person would expect; saves screenshots.
import { chromium } from 'playwright-core';

const [base, token, shots, failedId] = process.argv.slice(2);
const fail = (why) => { console.error(`FAIL: ${why}`); process.exit(1); };

const browser = await chromium.launch({
  executablePath: process.env.PREVIEWD_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-component-update', '--no-first-run'],
});
try {
  const page = await browser.newPage();
  // No script from a branch name may ever run: any dialog is a failure.
  page.on('dialog', (d) => fail(`a dialog opened: ${d.message()}`));
  page.on('pageerror', (e) => fail(`a script error: ${e.message}`));

  // Signed out: the login form, not the list.
  await page.goto(base + '/');
  if (await page.locator('tr[data-env]').count() !== 0) fail('rows shown without the token');
  await page.fill('input[name=token]', token);
  await Promise.all([page.waitForNavigation(), page.click('button')]);
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === 'previewd_session');
  if (!session || session.value.includes(token) || !session.httpOnly || session.sameSite !== 'Strict') {
    fail(`the session cookie is not as it should be: ${JSON.stringify(cookies)}`);
  }

  // The list: every environment, hostile names as text.
  await page.waitForSelector('tr[data-env]');
  const rows = await page.locator('tr[data-env]').count();
  if (rows < 4) fail(`expected at least 4 rows, saw ${rows}`);
  const text = await page.locator('#rows').innerText();
  if (!text.includes('<img/src=x/onerror=alert(1)>')) fail(`the hostile branch is not shown as text: ${text}`);
  if (!text.includes('rtl/\u202Eevil')) fail('the right-to-left branch is not shown as it is named');
  if (await page.locator('#rows img').count() !== 0) fail('markup from a branch name became an element');
  await page.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });

  // Filter by status, on the server.
  await page.selectOption('select[name=status]', 'failed');
  await Promise.all([page.waitForNavigation(), page.click('form.filters button')]);
  const statuses = await page.locator('tr[data-env]').evaluateAll((trs) => trs.map((t) => t.dataset.status));
  if (statuses.length !== 1 || statuses[0] !== 'failed') fail(`filtered to failed, saw ${statuses}`);

  // Redeploy the failed environment; its status changes on the page without a reload.
  await page.goto(`${base}/environments/${failedId}`);
  const before = await page.locator('#status').innerText();
  if (before !== 'failed') fail(`expected failed, saw ${before}`);
  let reloaded = false;
  page.on('framenavigated', () => { reloaded = true; });
  await page.click('button[data-action=redeploy]');
  await page.waitForFunction(() => document.querySelector('#status').innerText !== 'failed', null, { timeout: 30000 });
  if (reloaded) fail('the page reloaded');
  await page.screenshot({ path: `${shots}/redeployed.png`, fullPage: true });
  console.log(`ok: ${rows} rows, filtered, signed in, redeployed (status now ${await page.locator('#status').innerText()})`);
} finally {
  await browser.close();
}
