// The Shoal dashboard. It reads the admin API with the token it was given, every
// second; rates and percentiles are computed here from counters and cumulative
// histograms over a sliding window. Text from the host (names, log lines) is only
// ever set as textContent, never parsed as HTML.
"use strict";

const POLL_MS = 1000;
const WINDOW_SAMPLES = 5; // seconds of history behind each rate
const HISTORY = 120; // samples kept for the charts
const LOG_LINES = 200;

const state = {
  token: sessionStorage.getItem("shoal-token") || "",
  who: null,
  services: [], // the latest GET /v1/services
  samples: new Map(), // service -> [{t, stats}]
  series: new Map(), // service -> [{t, rate, errors, p50, p95, p99}]
  selected: null,
  cluster: null, // the latest GET /v1/cluster, when this host is in one
  logAbort: null,
  timer: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = null;
  }
  if (!response.ok) {
    const message = (json && json.error) || text || response.statusText;
    const error = new Error(`${response.status}: ${message}`);
    error.status = response.status;
    throw error;
  }
  return json;
}

// ---- login ----

async function login(token) {
  state.token = token;
  try {
    state.who = await api("GET", "/v1/whoami");
  } catch (error) {
    state.token = "";
    sessionStorage.removeItem("shoal-token");
    $("login-error").textContent =
      error.status === 401 ? "That token is unknown or revoked." : `Cannot log in: ${error.message}`;
    return;
  }
  sessionStorage.setItem("shoal-token", token);
  $("login-error").textContent = "";
  $("login-view").hidden = true;
  $("main-view").hidden = false;
  $("logout").hidden = false;
  const patterns = state.who.services && state.who.services.length ? ` on ${state.who.services.join(", ")}` : "";
  $("who").textContent = `${state.who.token_id} · ${state.who.scope}${patterns}`;
  try {
    const host = await api("GET", "/v1/host");
    $("backends").textContent = `${host.host_id} · store ${host.store} · bus ${host.bus}`;
  } catch (error) {
    $("backends").textContent = "";
  }
  await poll();
  state.timer = setInterval(poll, POLL_MS);
}

function logout() {
  clearInterval(state.timer);
  stopLog();
  sessionStorage.removeItem("shoal-token");
  state.token = "";
  state.who = null;
  state.selected = null;
  state.samples.clear();
  state.series.clear();
  $("main-view").hidden = true;
  $("login-view").hidden = false;
  $("logout").hidden = true;
  $("who").textContent = "";
}

// ---- what a token may do (the host decides; this only hides what it would refuse) ----

function globMatches(pattern, name) {
  const escaped = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${escaped}$`).test(name);
}

function mayChange(service) {
  const who = state.who;
  if (!who) return false;
  if (who.scope === "admin") return true;
  if (who.scope !== "deploy") return false;
  return !who.services.length || who.services.some((pattern) => globMatches(pattern, service));
}

// ---- numbers ----

function percentile(buckets, q) {
  // buckets: [[upper bound (s), count in the window at most that]], cumulative.
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return null;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [bound, count] of buckets) {
    if (count >= rank) {
      if (!Number.isFinite(bound)) return lowerBound * 1000;
      const inBucket = count - lowerCount;
      const share = inBucket ? (rank - lowerCount) / inBucket : 1;
      return (lowerBound + (bound - lowerBound) * share) * 1000;
    }
    lowerBound = bound;
    lowerCount = count;
  }
  return lowerBound * 1000;
}

function windowOf(name) {
  const samples = state.samples.get(name) || [];
  if (samples.length < 2) return null;
  const newest = samples[samples.length - 1];
  const oldest = samples[Math.max(0, samples.length - 1 - WINDOW_SAMPLES)];
  const seconds = (newest.t - oldest.t) / 1000;
  if (seconds <= 0) return null;
  const a = oldest.stats || { requests: 0, failures: 0, by_version: {}, buckets: [] };
  const b = newest.stats || a;
  // Counters of a replaced version are dropped, so a difference may go negative.
  const requests = Math.max(0, b.requests - a.requests);
  const failures = Math.max(0, b.failures - a.failures);
  const buckets = (b.buckets || []).map(([bound, count], i) => [bound, Math.max(0, count - ((a.buckets[i] || [0, 0])[1]))]);
  const byVersion = {};
  for (const [version, count] of Object.entries(b.by_version || {})) {
    byVersion[version] = count - ((a.by_version || {})[version] || 0);
  }
  // gRPC calls by status class; a failed call is an HTTP 200 with its status in trailers.
  const grpc = {};
  for (const [cls, count] of Object.entries(b.grpc || {})) {
    grpc[cls] = Math.max(0, count - ((a.grpc || {})[cls] || 0));
  }
  return {
    seconds,
    requests,
    rate: requests / seconds,
    errors: requests ? (100 * failures) / requests : 0,
    p50: percentile(buckets, 0.5),
    p95: percentile(buckets, 0.95),
    p99: percentile(buckets, 0.99),
    byVersion,
    grpc,
  };
}

// "ok 120 · client 3 · server 1" calls in the window, or "–" for a service without gRPC.
function grpcClasses(w) {
  if (!w) return ["–", "grpc"];
  const names = [["ok", "ok"], ["client_error", "client"], ["server_error", "server"]];
  const parts = names.filter(([cls]) => w.grpc[cls]).map(([cls, label]) => `${label} ${w.grpc[cls]}`);
  return [parts.length ? parts.join(" · ") : "–", `grpc${w.grpc.server_error ? " bad" : ""}`];
}

const fixed = (n, digits = 1) => (n === null || n === undefined ? "–" : Number(n).toFixed(digits));
const ms = (n) => (n === null ? "–" : `${fixed(n, n < 10 ? 2 : 1)} ms`);

// ---- polling and rendering ----

async function poll() {
  let services;
  let stats;
  try {
    [services, stats] = await Promise.all([api("GET", "/v1/services"), api("GET", "/v1/stats")]);
  } catch (error) {
    $("status").textContent = `update failed: ${error.message}`;
    if (error.status === 401) logout();
    return;
  }
  $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  const now = Date.now();
  state.services = services.services || [];
  const names = new Set(state.services.map((s) => s.name));
  for (const name of [...state.samples.keys()]) {
    if (!names.has(name)) {
      state.samples.delete(name);
      state.series.delete(name);
    }
  }
  for (const service of state.services) {
    const samples = state.samples.get(service.name) || [];
    samples.push({ t: now, stats: (stats.services || {})[service.name] || null });
    while (samples.length > WINDOW_SAMPLES + 1) samples.shift();
    state.samples.set(service.name, samples);
    const w = windowOf(service.name);
    if (w) {
      const series = state.series.get(service.name) || [];
      series.push({ t: now, rate: w.rate, errors: w.errors, p50: w.p50, p95: w.p95, p99: w.p99 });
      while (series.length > HISTORY) series.shift();
      state.series.set(service.name, series);
    }
  }
  try {
    state.cluster = await api("GET", "/v1/cluster");
  } catch (error) {
    state.cluster = null; // 404: this host serves alone
  }
  renderHosts();
  renderServices();
  renderFaults();
  renderBreakers(stats.breakers || []);
  renderDeploys();
  renderDetail();
}

function renderHosts() {
  const cluster = state.cluster;
  $("cluster").hidden = !cluster;
  const body = $("hosts").tBodies[0];
  body.replaceChildren();
  if (!cluster) return;
  for (const host of cluster.hosts) {
    const row = el("tr");
    row.dataset.host = host.id;
    const labels = Object.entries(host.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    row.append(
      el("td", host.id),
      el("td", host.address),
      el("td", host.state, `state-${host.state}`),
      el("td", cluster.leader === host.id ? "leader" : ""),
      el("td", `${host.memory_used_mb} / ${host.memory_budget_mb} MiB`),
      el("td", labels || "–"),
      el("td", host.services.join(", ") || "–"),
    );
    body.append(row);
  }
}

function placedOn(service) {
  const placements = service.placements || [];
  return placements.length ? placements.map((p) => `${p.host} (${p.state})`).join(", ") : "–";
}

function renderServices() {
  const body = $("services").tBodies[0];
  body.replaceChildren();
  for (const service of state.services) {
    const w = windowOf(service.name);
    const row = el("tr");
    row.id = `svc-${service.name}`;
    if (service.name === state.selected) row.classList.add("selected");
    const faults = Object.values(service.faults || {}).reduce((a, b) => a + b, 0);
    const canary = service.canary ? `${service.canary.version} (${service.canary.weight}%)` : "–";
    const cells = [
      [service.name, "name"],
      [service.version, "version"],
      [canary, "canary"],
      [w ? fixed(w.rate) : "–", "rate num"],
      [w ? `${fixed(w.errors)}%` : "–", `errors num${w && w.errors > 0 ? " bad" : ""}`],
      [w ? ms(w.p50) : "–", "p50 num"],
      [w ? ms(w.p95) : "–", "p95 num"],
      [w ? ms(w.p99) : "–", "p99 num"],
      grpcClasses(w),
      [service.usage ? `${fixed(service.usage.cpu_seconds, 2)} s` : "–", "cpu num"],
      [faults, `faults num${faults ? " warn" : ""}`],
      [service.load ? `${service.load.in_flight} / ${service.load.queued}` : "–", "load num"],
    ];
    if (service.state === "failed") cells[2] = [`failed: ${service.reason || ""}`, "canary bad"];
    for (const [text, className] of cells) row.append(el("td", text, className));
    const traffic = el("td", null, "traffic");
    if (w && w.requests > 0) {
      for (const [version, count] of Object.entries(w.byVersion)) {
        if (count <= 0) continue;
        const bar = el("span", null, service.canary && version === service.canary.version ? "bar canary" : "bar");
        bar.style.width = `${Math.round((60 * count) / w.requests)}px`;
        bar.title = `${version}: ${Math.round((100 * count) / w.requests)}%`;
        traffic.append(bar);
      }
    }
    row.append(traffic);
    row.append(el("td", placedOn(service), "hosts"));
    row.addEventListener("click", () => select(service.name));
    body.append(row);
  }
}

function renderFaults() {
  const body = $("faults").tBodies[0];
  body.replaceChildren();
  for (const service of state.services) {
    for (const [kind, count] of Object.entries(service.faults || {})) {
      if (!count) continue;
      const row = el("tr");
      row.append(el("td", service.name), el("td", kind), el("td", count, "num"));
      body.append(row);
    }
  }
}

function renderBreakers(breakers) {
  const body = $("breakers").tBodies[0];
  body.replaceChildren();
  for (const breaker of breakers) {
    const row = el("tr");
    const stateClass = breaker.state === "open" ? "bad" : breaker.state === "half-open" ? "warn" : "good";
    row.append(el("td", breaker.caller), el("td", breaker.target), el("td", breaker.state, stateClass));
    body.append(row);
  }
}

function renderDeploys() {
  const list = $("deploys");
  list.replaceChildren();
  const deploys = state.services
    .filter((s) => s.deployed_at)
    .map((s) => ({ at: s.deployed_at, text: `${s.name} ${s.version}${s.canary ? ` + canary ${s.canary.version}` : ""}` }))
    .sort((a, b) => (a.at < b.at ? 1 : -1))
    .slice(0, 10);
  for (const deploy of deploys) list.append(el("li", `${deploy.at.replace("T", " ").slice(0, 19)} · ${deploy.text}`));
}

function select(name) {
  if (state.selected === name) return;
  state.selected = name;
  $("action-result").textContent = "";
  const service = state.services.find((s) => s.name === name);
  if (service && service.limits) $("scale-input").value = service.limits.max_concurrency;
  if (service) $("canary-input").value = service.canary ? service.canary.weight : 0;
  renderServices();
  renderDetail();
  followLog(name);
}

function renderDetail() {
  const name = state.selected;
  const service = state.services.find((s) => s.name === name);
  $("detail").hidden = !service;
  if (!service) {
    stopLog();
    return;
  }
  $("detail-name").textContent = service.name;
  const limits = service.limits || {};
  const usage = service.usage || {};
  $("detail-summary").textContent =
    `${service.version} · route ${service.route} · memory ${limits.memory_mb} MiB · timeout ${limits.timeout_ms} ms · ` +
    `concurrency ${limits.max_concurrency} · ${usage.instances_created || 0} instances · memory peak ` +
    `${((usage.memory_peak_bytes || 0) / 1048576).toFixed(1)} MiB`;
  const w = windowOf(name);
  const share = $("canary-share");
  if (service.canary) {
    const took = w && w.requests ? Math.round((100 * (w.byVersion[service.canary.version] || 0)) / w.requests) : null;
    share.textContent = `Canary ${service.canary.version}: weight ${service.canary.weight}%, took ${
      took === null ? "–" : `${took}%`
    } of the last ${w ? w.requests : 0} requests`;
    share.dataset.share = took === null ? "" : String(took);
  } else {
    share.textContent = "No canary.";
    share.dataset.share = "";
  }
  const allowed = mayChange(name);
  $("actions").hidden = !allowed;
  $("read-only").hidden = allowed;
  $("canary-form").hidden = !service.canary;
  const series = state.series.get(name) || [];
  chart($("chart-rate"), [series.map((p) => p.rate)], ["#1f6feb"]);
  chart($("chart-errors"), [series.map((p) => p.errors)], ["#cf222e"]);
  chart(
    $("chart-latency"),
    [series.map((p) => p.p50), series.map((p) => p.p95), series.map((p) => p.p99)],
    ["#1a7f37", "#bf8700", "#cf222e"],
  );
}

function chart(canvas, lines, colors) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const values = lines.flat().filter((v) => v !== null && Number.isFinite(v));
  const max = Math.max(1e-9, ...values) * 1.1;
  context.strokeStyle = "#e4e7ec";
  context.fillStyle = "#667085";
  context.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 2; i++) {
    const y = height - 16 - ((height - 24) * i) / 2;
    context.beginPath();
    context.moveTo(0, y);
    context.lineTo(width, y);
    context.stroke();
    context.fillText(fixed((max * i) / 2, max < 10 ? 2 : 0), 4, y - 2);
  }
  lines.forEach((points, index) => {
    context.strokeStyle = colors[index];
    context.lineWidth = 2;
    context.beginPath();
    let started = false;
    points.forEach((value, i) => {
      if (value === null || !Number.isFinite(value)) return;
      const x = width - (points.length - 1 - i) * (width / HISTORY);
      const y = height - 16 - ((height - 24) * value) / max;
      if (started) context.lineTo(x, y);
      else context.moveTo(x, y);
      started = true;
    });
    context.stroke();
  });
}

// ---- the selected service's log, followed ----

function stopLog() {
  if (state.logAbort) state.logAbort.abort();
  state.logAbort = null;
}

async function followLog(name) {
  stopLog();
  const pre = $("log-tail");
  pre.textContent = "";
  const abort = new AbortController();
  state.logAbort = abort;
  let response;
  try {
    response = await fetch(`/v1/services/${encodeURIComponent(name)}/logs?follow=1&tail=50`, {
      headers: { Authorization: `Bearer ${state.token}` },
      signal: abort.signal,
    });
  } catch (_) {
    return;
  }
  if (!response.ok || !response.body) {
    pre.textContent = `(the log cannot be followed: ${response.status})`;
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  let event = "";
  const lines = [];
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (_) {
      return;
    }
    if (chunk.done) return;
    pending += decoder.decode(chunk.value, { stream: true });
    let end;
    while ((end = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, end).replace(/\r$/, "");
      pending = pending.slice(end + 1);
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) {
        let data = {};
        try {
          data = JSON.parse(line.slice(5));
        } catch (_) {
          continue;
        }
        lines.push(
          event === "dropped"
            ? `… ${data.lines} lines dropped`
            : `${(data.at || "").slice(11, 23)} ${String(data.level || "").toUpperCase().padEnd(5)} ${data.request_id || ""} ${data.message || ""}${data.fields ? ` ${data.fields}` : ""}`,
        );
        while (lines.length > LOG_LINES) lines.shift();
        if (state.logAbort === abort) {
          const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          pre.textContent = lines.join("\n");
          if (atBottom) pre.scrollTop = pre.scrollHeight;
        }
      } else if (line === "") event = "";
    }
  }
}

// ---- actions ----

async function act(description, method, path, body) {
  const result = $("action-result");
  result.classList.remove("failed");
  result.textContent = `${description}…`;
  try {
    await api(method, path, body);
    result.textContent = `${description}: done`;
  } catch (error) {
    result.classList.add("failed");
    result.textContent = `${description} failed: ${error.message}`;
  }
  await poll();
}

function wire() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    login($("token").value.trim());
  });
  $("logout").addEventListener("click", logout);
  $("scale-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = state.selected;
    act(`Scale ${name}`, "PUT", `/v1/services/${encodeURIComponent(name)}/scale`, {
      max_concurrency: Number($("scale-input").value),
    });
  });
  $("canary-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = state.selected;
    act(`Canary weight of ${name}`, "PUT", `/v1/services/${encodeURIComponent(name)}/canary`, {
      weight: Number($("canary-input").value),
    });
  });
  $("promote").addEventListener("click", () => {
    const name = state.selected;
    act(`Promote the canary of ${name}`, "POST", `/v1/services/${encodeURIComponent(name)}/canary/promote`);
  });
  $("rollback").addEventListener("click", () => {
    const name = state.selected;
    act(`Roll back ${name}`, "POST", `/v1/services/${encodeURIComponent(name)}/rollback`);
  });
  if (state.token) login(state.token);
}

wire();
