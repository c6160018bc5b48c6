// Runs one browser scenario: `node run.mjs NAME` (started by
// crates/till/tests/browser.rs, which owns the hub and till processes).
// Exit code 0 means the scenario held; on failure a screenshot of every open
// page is saved next to the scenario's other screenshots.
import { chromium } from 'playwright-core';
import { ctx } from './lib.mjs';

const name = process.argv[2];
if (!name) {
  console.error('usage: node run.mjs SCENARIO');
  process.exit(2);
}
const scenario = (await import(`./scenarios/${name}.mjs`)).default;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // The tests run as root in CI, where chromium's sandbox cannot start.
  args: ['--no-sandbox'],
});
let code = 0;
const c = ctx(browser);
try {
  await scenario(c);
  console.log(`scenario ${name}: passed`);
} catch (e) {
  code = 1;
  console.log(`scenario ${name}: FAILED: ${e && e.stack ? e.stack : e}`);
  await c.shotAll('failure');
} finally {
  await browser.close();
  c.close();
}
process.exit(code);
