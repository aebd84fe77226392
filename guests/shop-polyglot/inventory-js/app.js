// `inventory`, in JavaScript: the shop's inventory with the same HTTP contract as the
// Rust one (guests/shop/inventory), so either can be deployed as `inventory`.
//
// Every change reads and writes the stock in one store transaction, so concurrent
// reservations never oversell: a transaction that read stock another one changed
// fails with a conflict and runs again on the new figures.
//
// - `PUT /stock/{sku}` `{"available": N}`: set the units free to order; units held by
//   reservations and units sold are kept as they are.
// - `GET /stock/{sku}`: `{"available", "reserved", "sold"}`, 404 for an unknown SKU.
// - `POST /reservations` `{"id", "sku", "quantity"}`: hold stock; idempotent by `id`.
//   201, 409 `insufficient stock`, 404 `unknown product`, 410 when `id` was already
//   released.
// - `POST /reservations/{id}/commit` and `/release`: idempotent.
// - `order.created` events commit the order's reservation (at least once,
//   de-duplicated by the inbox).

import { get as storeGet, Transaction } from 'shoal:platform/store@0.1.0';
import { markHandled } from 'shoal:platform/events@0.1.0';
import { subscribeDuration } from 'wasi:clocks/monotonic-clock@0.2.10';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Bodies this service reads are a few dozen bytes.
const MAX_BODY = 16 * 1024;

/// An answer that ends a transaction without committing it.
class Answer {
  constructor(status, value) {
    this.status = status;
    this.value = value;
  }
}

const json = (status, value) =>
  new Response(JSON.stringify(value), {
    status,
    headers: { 'content-type': 'application/json' },
  });
const error = (status, message) => new Answer(status, { error: message });

const validSku = (sku) => typeof sku === 'string' && /^[A-Za-z0-9_-]{1,64}$/.test(sku);
const isCount = (n, max) => Number.isSafeInteger(n) && n >= 0 && n <= max;

function read(tx, key) {
  const bytes = tx.get(key);
  if (bytes === undefined) return undefined;
  try {
    return JSON.parse(decoder.decode(bytes));
  } catch {
    return undefined;
  }
}

const write = (tx, key, value) => tx.set(key, encoder.encode(JSON.stringify(value)));

/// Wait a random time below a ceiling that doubles per attempt (1 ms up to 50 ms), so
/// transactions that conflicted do not all run again at once.
function backoff(attempt) {
  const ceilingMicros = Math.min(2 ** Math.min(attempt, 6), 50) * 1000;
  const micros = Math.floor(Math.random() * (ceilingMicros + 1));
  subscribeDuration(BigInt(micros) * 1000n).block();
}

/// Run `work(tx)` in a transaction, retried on conflict after a backoff; an `Answer`
/// it returns is committed, an `Answer` it throws is not.
function run(work) {
  for (let attempt = 0; attempt < 50; attempt++) {
    if (attempt > 0) backoff(attempt - 1);
    const tx = new Transaction();
    try {
      const answer = work(tx);
      tx.commit();
      return answer;
    } catch (failure) {
      if (failure instanceof Answer) return failure;
      const tag = failure?.payload?.tag;
      if (tag === 'conflict') continue;
      if (tag === 'too-large') return error(413, 'too large');
      if (tag === 'quota-exceeded') return error(507, 'the inventory is full');
      return error(503, `store unavailable: ${tag ?? failure}`);
    } finally {
      tx[Symbol.dispose]?.();
    }
  }
  return error(503, 'store unavailable: kept conflicting');
}

function setStock(sku, body) {
  if (!validSku(sku) || !body || !isCount(body.available, 1_000_000_000)) {
    return error(400, 'expected {"available": N} and a valid SKU');
  }
  return run((tx) => {
    const held = read(tx, `stock/${sku}`) ?? { reserved: 0, sold: 0 };
    const stock = { available: body.available, reserved: held.reserved, sold: held.sold };
    write(tx, `stock/${sku}`, stock);
    return new Answer(200, stock);
  });
}

function getStock(sku) {
  if (!validSku(sku)) return error(404, 'unknown product');
  try {
    const bytes = storeGet(`stock/${sku}`);
    return bytes === undefined
      ? error(404, 'unknown product')
      : new Answer(200, JSON.parse(decoder.decode(bytes)));
  } catch (failure) {
    return error(503, `store unavailable: ${failure?.payload?.tag ?? failure}`);
  }
}

function reserve(body) {
  const { id, sku, quantity } = body ?? {};
  if (typeof id !== 'string' || id.length === 0 || id.length > 64 || !validSku(sku)
      || !isCount(quantity, 1000) || quantity < 1) {
    return error(400, 'bad id, SKU or quantity');
  }
  return run((tx) => {
    const key = `reservation/${id}`;
    const existing = read(tx, key);
    if (existing !== undefined) {
      // A retry of a reservation already made (or a late one after a release).
      throw existing.state === 'released'
        ? error(410, 'reservation released')
        : new Answer(201, { id, state: existing.state });
    }
    const stockKey = `stock/${sku}`;
    const stock = read(tx, stockKey);
    if (stock === undefined) throw error(404, 'unknown product');
    if (stock.available < quantity) throw error(409, 'insufficient stock');
    stock.available -= quantity;
    stock.reserved += quantity;
    write(tx, stockKey, stock);
    write(tx, key, { sku, quantity, state: 'held' });
    return new Answer(201, { id, state: 'held' });
  });
}

/// Move a held reservation to `to` (committed: sold; released: back to available).
/// A release of an unknown reservation leaves a tombstone, so a reservation that
/// arrives late is refused instead of held forever.
function settle(tx, id, to) {
  const key = `reservation/${id}`;
  const reservation = read(tx, key);
  if (reservation === undefined) {
    if (to !== 'released') throw error(404, 'unknown reservation');
    write(tx, key, { sku: '', quantity: 0, state: 'released' });
    return new Answer(200, { id, state: 'released' });
  }
  if (reservation.state === 'held') {
    const stockKey = `stock/${reservation.sku}`;
    const stock = read(tx, stockKey) ?? { available: 0, reserved: 0, sold: 0 };
    stock.reserved = Math.max(0, stock.reserved - reservation.quantity);
    if (to === 'committed') stock.sold += reservation.quantity;
    else stock.available += reservation.quantity;
    write(tx, stockKey, stock);
    reservation.state = to;
    write(tx, key, reservation);
  } else if (reservation.state !== to) {
    throw error(409, 'reservation already settled the other way');
  }
  return new Answer(200, { id, state: reservation.state });
}

function orderCreated(request, body) {
  const eventId = request.headers.get('x-shoal-event-id');
  if (!eventId) return error(400, 'not an event delivery');
  if (typeof body?.id !== 'string') {
    // A malformed event cannot become valid by retrying: acknowledge it.
    return error(200, 'ignored a malformed order.created');
  }
  return run((tx) => {
    // An unknown or already released reservation has nothing to commit; the event
    // is handled all the same (a retry would find the same).
    try {
      settle(tx, body.id, 'committed');
    } catch (failure) {
      if (!(failure instanceof Answer)) throw failure;
    }
    markHandled(tx, eventId);
    return new Answer(200, { handled: eventId });
  });
}

/// The body as JSON: `null` when it is not JSON, `undefined` when it is too large.
async function readJson(request) {
  const bytes = new Uint8Array(await request.arrayBuffer());
  if (bytes.length > MAX_BODY) return undefined;
  try {
    return JSON.parse(decoder.decode(bytes));
  } catch {
    return null;
  }
}

async function handle(request) {
  const parts = new URL(request.url).pathname.split('/').filter((part) => part !== '');
  const method = request.method;
  const route = (want, ...names) =>
    method === want && parts.length === names.length
    && names.every((name, i) => name === '*' || name === parts[i]);
  let answer;
  if (route('PUT', 'stock', '*')) {
    const body = await readJson(request);
    answer = body === undefined ? error(413, 'too large') : setStock(parts[1], body);
  } else if (route('GET', 'stock', '*')) {
    answer = getStock(parts[1]);
  } else if (route('POST', 'reservations')) {
    const body = await readJson(request);
    answer = body === undefined ? error(413, 'too large') : reserve(body);
  } else if (route('POST', 'reservations', '*', 'commit')) {
    answer = run((tx) => settle(tx, parts[1], 'committed'));
  } else if (route('POST', 'reservations', '*', 'release')) {
    answer = run((tx) => settle(tx, parts[1], 'released'));
  } else if (route('POST', 'events', 'order-created')) {
    answer = orderCreated(request, await readJson(request));
  } else {
    answer = error(404, 'no such route');
  }
  return json(answer.status, answer.value);
}

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));
