// A cashier sells three items by clicking and sees the receipt; the sale
// appears on the second till's Sales page.
import { signIn, addProduct, cartText, payCash, assert, eventually } from '../lib.mjs';

export default async function (c) {
  const a = await c.page(0);
  await signIn(a, 'Sam', '1111');
  await c.shot(a, 'signed-in');
  const items = ['Cappuccino', 'Croissant', 'Caffe latte'];
  for (const name of items) await addProduct(a, name);
  const cart = await cartText(a);
  for (const name of items) assert(cart.includes(name), `the cart lists ${name}: ${cart}`);
  await c.shot(a, 'cart');
  const receipt = await payCash(a, '20.00');
  for (const name of items) assert(receipt.text.includes(name), `the receipt lists ${name}: ${receipt.text}`);
  // 3.50 + 1.80 + 3.80 = 9.10 paid from 20.00: 10.90 change.
  assert(receipt.text.includes('9.10'), `the receipt shows the total 9.10: ${receipt.text}`);
  assert(receipt.text.includes('10.90'), `the receipt shows the change 10.90: ${receipt.text}`);
  await c.shot(a, 'receipt');

  const b = await c.page(1);
  await signIn(b, 'Jo', '2222');
  await eventually(
    b,
    c.ui(1) + '/sales',
    async (p) => (await p.locator('body').innerText()).includes(receipt.number),
    `sale ${receipt.number} on the second till's Sales page`,
    // Live events bring it at once; the sync timer (10 s) is the fallback.
    30_000,
  );
  await c.shot(b, 'second-till-sales');
}
