// `js-greeter`: a Shoal service in JavaScript (componentize-js) on the same
// `shoal:platform` imports as the Rust SDK: config, log, store and events, metrics,
// tracing, and a call to another service through the resilient caller.
//
// `GET /` answers, one `key: value` a line: `greeting` (config, default `Hello`),
// `visits` (a counter in its own store, incremented in a transaction that also
// publishes `greeting.sent`), `downstream` (status and body of `GET /` at the service
// named by the config `downstream`, default `python-greeter`), `trace` (the trace id).

import { get as configGet } from 'shoal:platform/config@0.1.0';
import { write as log } from 'shoal:platform/log@0.1.0';
import { call } from 'shoal:platform/caller@0.1.0';
import { counterAdd } from 'shoal:platform/metrics@0.1.0';
import { startSpan, traceId } from 'shoal:platform/tracing@0.1.0';
import { Transaction } from 'shoal:platform/store@0.1.0';
import { publishIn } from 'shoal:platform/events@0.1.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Add one to `visits` and publish it, in one transaction; retried on conflict.
function countVisit() {
  for (let attempt = 0; attempt < 20; attempt++) {
    const tx = new Transaction();
    try {
      const current = tx.get('visits');
      const visits = current ? Number(decoder.decode(current)) + 1 : 1;
      tx.set('visits', encoder.encode(String(visits)));
      publishIn(tx, 'greeting.sent', encoder.encode(String(visits)));
      tx.commit();
      return visits;
    } catch (error) {
      if (error?.payload?.tag !== 'conflict') throw error;
    }
  }
  throw new Error('the visit counter kept conflicting');
}

function callDownstream() {
  const target = configGet('downstream') ?? 'python-greeter';
  try {
    const response = call(
      target,
      { method: 'GET', pathWithQuery: '/', headers: [], body: new Uint8Array() },
      { attemptTimeoutMs: undefined, deadlineMs: undefined, idempotent: true },
    );
    return `${response.status} ${decoder.decode(response.body).trim()}`;
  } catch (error) {
    return `failed ${error?.payload?.tag ?? error}`;
  }
}

function handle(request) {
  const path = new URL(request.url).pathname;
  if (path !== '/') {
    return new Response('no such route\n', { status: 404 });
  }
  const span = startSpan('greet');
  span.setAttribute('language', 'javascript');
  const greeting = configGet('greeting') ?? 'Hello';
  const visits = countVisit();
  // The downstream answer is several lines: indent it under its key.
  const downstream = callDownstream().replaceAll('\n', '\n  ');
  counterAdd('greetings_total', [['language', 'javascript']], 1);
  log('info', 'greeted', [['visits', String(visits)]]);
  const trace = traceId();
  span.end();
  const text = `greeting: ${greeting}\nvisits: ${visits}\ndownstream: ${downstream}\ntrace: ${trace}\n`;
  return new Response(text, { headers: { 'content-type': 'text/plain' } });
}

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));
