// Helpers shared by the scenarios: calls to the Rust harness, pages on the
// tills' UIs, sign-in, screenshots, and waiting on the sync indicator.
import readline from 'node:readline';
import path from 'node:path';

const rl = readline.createInterface({ input: process.stdin });
const answers = rl[Symbol.asyncIterator]();

// Bounds on waits, in milliseconds.
export const WAIT_MS = 10_000;

export function ctx(browser) {
  const pages = [];
  const shots = process.env.TILL_SHOTS || '.';
  let n = 0;
  const c = {
    // The UI base address of till `i`.
    ui(i) {
      const u = process.env[`TILL_UI_${i}`];
      if (!u) throw new Error(`no till ${i} in this scenario`);
      return u;
    },
    // Asks the harness to do something a browser cannot.
    async call(...args) {
      console.log('@call ' + JSON.stringify(args));
      const { value, done } = await answers.next();
      if (done) throw new Error('the harness closed the call channel');
      const v = JSON.parse(value);
      if (!v.ok) throw new Error(`call ${args[0]} failed: ${v.error}`);
      return v.value;
    },
    // A fresh page (own cookies) on till `i`, at 1024x768 as a till screen.
    async page(i) {
      const context = await browser.newContext({ viewport: { width: 1024, height: 768 } });
      const page = await context.newPage();
      page.setDefaultTimeout(WAIT_MS);
      page.on('pageerror', (e) => console.log(`page error on till ${i}: ${e}`));
      await page.goto(c.ui(i) + '/');
      pages.push(page);
      return page;
    },
    async shot(page, label) {
      n += 1;
      const file = path.join(shots, `${String(n).padStart(2, '0')}-${label}.png`);
      await page.screenshot({ path: file, fullPage: true });
      return file;
    },
    async shotAll(label) {
      for (const [i, p] of pages.entries()) {
        try {
          await c.shot(p, `${label}-page${i}`);
        } catch (e) {
          console.log(`no screenshot of page ${i}: ${e}`);
        }
      }
    },
    close() {
      rl.close();
    },
  };
  return c;
}

export function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

// Chooses a staff member by name in the sign-in form (a select or a text
// input, whichever the page has) and enters the PIN.
export async function signIn(page, staff, pin) {
  const who = page.getByLabel('Staff', { exact: true });
  const tag = await who.evaluate((e) => e.tagName);
  if (tag === 'SELECT') {
    const value = await who.evaluate(
      (e, name) => [...e.options].find((o) => o.text.trim().startsWith(name))?.value,
      staff,
    );
    assert(value !== undefined, `staff ${staff} is offered on the sign-in page`);
    await who.selectOption(value);
  } else {
    await who.fill(staff);
  }
  await page.getByLabel('PIN', { exact: true }).fill(pin);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('link', { name: 'Sell', exact: true }).waitFor();
}

export function indicator(page) {
  return page.getByTestId('sync-indicator');
}

// Waits until the indicator's text matches `re`; returns the text.
export async function waitIndicator(page, re, timeoutMs = WAIT_MS) {
  const el = indicator(page);
  const start = Date.now();
  let text = '';
  while (Date.now() - start < timeoutMs) {
    text = (await el.innerText()).replace(/\s+/g, ' ').trim();
    if (re.test(text)) return text;
    await page.waitForTimeout(100);
  }
  throw new Error(`the sync indicator never matched ${re} within ${timeoutMs} ms; it says: ${text}`);
}

// Adds a product to the cart by clicking its catalogue button, and waits
// until the cart shows it (the cart is updated in place, asynchronously).
export async function addProduct(page, name) {
  const cart = page.getByRole('region', { name: 'Cart' }).or(page.locator('[aria-label="Cart"]')).first();
  const before = await cart.innerText();
  await page.getByRole('button', { name: new RegExp('^' + name) }).first().click();
  const start = Date.now();
  for (;;) {
    const now = await cart.innerText();
    if (now !== before && now.includes(name)) break;
    if (Date.now() - start > WAIT_MS) throw new Error(`the cart never showed ${name}`);
    await page.waitForTimeout(50);
  }
}

// The cart region's text.
export async function cartText(page) {
  return (await page.getByRole('region', { name: 'Cart' }).or(page.locator('[aria-label="Cart"]')).first().innerText());
}

// Reloads `page` at `url` until `pred(page)` holds (another till's data
// arrives by sync; the page itself is not live).
export async function eventually(page, url, pred, what, timeoutMs = WAIT_MS) {
  const start = Date.now();
  while (Date.now() - start < timeoutMs) {
    await page.goto(url);
    if (await pred(page)) return;
    await page.waitForTimeout(300);
  }
  throw new Error(`${what} did not happen within ${timeoutMs} ms`);
}

// Chooses a payment method on the checkout form (radio buttons or a select).
export async function choosePayment(page, method) {
  const radio = page.getByRole('radio', { name: method, exact: true });
  if ((await radio.count()) > 0) {
    await radio.check();
  } else {
    await page.getByLabel('Payment method').selectOption({ label: method });
  }
}

// Receipt numbers are the till's prefix, a dash and six digits.
export const RECEIPT_RE = /\b[A-Z0-9]+-\d{6}\b/;

// Checks out the current cart in cash; returns the receipt number.
export async function payCash(page, tendered) {
  await page.getByRole('button', { name: 'Checkout' }).click();
  await choosePayment(page, 'Cash');
  await page.getByLabel('Tendered').fill(tendered);
  await page.getByRole('button', { name: 'Pay' }).click();
  const receipt = page.getByTestId('receipt');
  await receipt.waitFor();
  const text = await receipt.innerText();
  const m = text.match(RECEIPT_RE);
  assert(m, `the receipt shows its number: ${text}`);
  return { number: m[0], text };
}
