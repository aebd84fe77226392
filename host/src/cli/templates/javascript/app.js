// `{{name}}`: a Shoal service in JavaScript. `GET /` greets with the manifest's
// `greeting`.

import { get as configGet } from 'shoal:platform/config@0.1.0';
import { write as log } from 'shoal:platform/log@0.1.0';
import { counterAdd } from 'shoal:platform/metrics@0.1.0';

function handle(request) {
  const path = new URL(request.url).pathname;
  if (path !== '/') {
    return new Response(`no route for ${path}\n`, { status: 404 });
  }
  const greeting = configGet('greeting') ?? 'Hello';
  // A metric the host exports as shoal_guest_{{metric}}:greetings_total.
  counterAdd('greetings_total', [], 1);
  log('info', 'greeted', [['greeting', greeting]]);
  return new Response(`${greeting} from {{name}}!\n`, {
    headers: { 'content-type': 'text/plain' },
  });
}

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));
