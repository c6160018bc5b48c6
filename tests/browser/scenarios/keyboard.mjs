// A checkout with the keyboard only: no mouse click from sign-in to receipt.
import { assert, RECEIPT_RE } from '../lib.mjs';

// What the focused element is called: its label, aria-label or text. A
// key press may have submitted a form: wait for the next page first.
async function focused(page) {
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      await page.waitForLoadState('domcontentloaded');
      return await page.evaluate(() => {
        const e = document.activeElement;
        if (!e) return '';
        const byId = e.id ? document.querySelector(`label[for="${e.id}"]`) : null;
        return (e.getAttribute('aria-label') || (byId && byId.innerText) || e.innerText || e.value || '').trim();
      });
    } catch (e) {
      if (!String(e).includes('context was destroyed')) throw e;
      await page.waitForTimeout(100);
    }
  }
  throw new Error('the page kept navigating');
}

// Presses Tab until the focused element's name matches `re`.
async function tabTo(page, re, max = 200) {
  for (let i = 0; i < max; i++) {
    await page.keyboard.press('Tab');
    if (re.test(await focused(page))) return;
  }
  throw new Error(`Tab never reached a control named ${re}`);
}

export default async function (c) {
  const a = await c.page(0);
  await tabTo(a, /^Staff/);
  // A select takes typed letters; a text input takes the name.
  await a.keyboard.type('Sam');
  await tabTo(a, /^PIN/);
  await a.keyboard.type('1111');
  await a.keyboard.press('Enter');
  await a.getByRole('link', { name: 'Sell', exact: true }).waitFor();
  await c.shot(a, 'signed-in');

  await tabTo(a, /^Cappuccino/);
  await a.keyboard.press('Enter');
  await a.getByRole('region', { name: 'Cart' }).getByText('Cappuccino').first().waitFor();
  await tabTo(a, /^Checkout/);
  await a.keyboard.press('Enter');
  await a.waitForURL(/checkout/);
  await tabTo(a, /^Tendered/);
  await a.keyboard.type('5.00');
  await tabTo(a, /^Pay$/);
  await c.shot(a, 'checkout');
  await a.keyboard.press('Enter');
  const receipt = a.getByTestId('receipt');
  await receipt.waitFor();
  const text = await receipt.innerText();
  assert(RECEIPT_RE.test(text), `a receipt with its number: ${text}`);
  assert(text.includes('Cappuccino'), `the receipt lists the item: ${text}`);
  await c.shot(a, 'receipt');
}
