// The hub is stopped: the indicator shows Offline, then "1 pending" after a
// sale; the hub starts: it shows Synced within 5 seconds, without a reload.
import { signIn, addProduct, payCash, waitIndicator, indicator, assert } from '../lib.mjs';

export default async function (c) {
  const a = await c.page(0);
  await signIn(a, 'Sam', '1111');
  await waitIndicator(a, /Synced/);
  await c.shot(a, 'synced');

  // A mark on the window survives only if the page is never reloaded.
  await a.evaluate(() => {
    window.__tillsyncMark = 'kept';
  });
  await c.call('stop_hub');
  await waitIndicator(a, /Offline/);
  await c.shot(a, 'offline');

  await addProduct(a, 'Cappuccino');
  const receipt = await payCash(a, '5.00');
  await waitIndicator(a, /\b1 pending\b/);
  await c.shot(a, 'one-pending');
  // The checkout may have navigated; mark the page again from here on.
  await a.evaluate(() => {
    window.__tillsyncMark = 'kept';
  });

  await c.call('start_hub');
  const started = Date.now();
  await waitIndicator(a, /Synced/, 5_000);
  const took = Date.now() - started;
  console.log(`Synced ${took} ms after the hub started`);
  assert((await a.evaluate(() => window.__tillsyncMark)) === 'kept', 'the page was not reloaded');
  const st = await c.call('status', 0);
  assert(Object.values(st.pending || {}).every((n) => n === 0), `nothing pending after sync: ${JSON.stringify(st)}`);
  assert((await indicator(a).innerText()).length > 0, 'the indicator has text');
  await c.shot(a, 'synced-again');
  console.log(`sale ${receipt.number} synced`);
}
