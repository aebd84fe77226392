#!/usr/bin/env python3
"""Shoal benchmarks: run side by side on this machine, report medians of rounds.

Each section starts what it needs, measures, and adds rows to one Markdown table
written to --out. Standard library only.
"""

import argparse
import datetime
import glob
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TOKEN = "bench-token"

# The peer in its best configuration: the pooling allocator, as Shoal uses, and the
# CLI interfaces the plain wasi:http guest imports.
# The pooling allocator with the same reset settings as Shoal's: 64 KiB of each memory,
# table and stack kept resident and PAGEMAP_SCAN where the kernel has it (+32 % fresh
# requests/s for wasmtime serve over pooling alone, measured on wasi_hello.wasm).
WASMTIME_SERVE_BEST = ["-O", "pooling-allocator=y,pooling-memory-keep-resident=65536,pooling-table-keep-resident=65536,"
                       "pooling-async-stack-keep-resident=65536,pooling-pagemap-scan=auto", "-S", "cli=y"]


class Host:
    """A `shoal serve` process on free ports with its own data directory."""

    def __init__(self, shoal, extra=(), directory=None, env=None, startup_seconds=120):
        self.owned = directory is None
        self.dir = directory or tempfile.mkdtemp(prefix="shoal-bench-")
        self.started = time.perf_counter()
        env = dict(env or os.environ, SHOAL_ADMIN_TOKEN=TOKEN, SHOAL_LOG="warn")
        self.proc = subprocess.Popen(
            [shoal, "serve", "--data-dir", os.path.join(self.dir, "data"),
             "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             "--max-instances-per-service", "1000", *extra],
            stdout=subprocess.PIPE, stderr=open(os.path.join(self.dir, "host.log"), "ab"),
            env=env, text=True)
        self.gateway = self.admin = None
        deadline = time.time() + startup_seconds
        while self.gateway is None or self.admin is None:
            line = self.proc.stdout.readline()
            if not line or time.time() > deadline:
                raise RuntimeError("host did not start: " + open(os.path.join(self.dir, "host.log")).read())
            if line.startswith("gateway listening on http://"):
                self.gateway = line.strip().split("http://")[1]
            elif line.startswith("admin API listening on http://"):
                self.admin = line.strip().split("http://")[1]
        # Keep reading stdout so the host never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.wait_ready(deadline)
        self.ready_after = time.perf_counter() - self.started

    def wait_ready(self, deadline):
        """Wait until every persisted service is restored (`/readyz` answers 200)."""
        while time.time() < deadline:
            try:
                conn = http.client.HTTPConnection(self.admin, timeout=5)
                conn.request("GET", "/readyz")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError("host never became ready")

    def admin_call(self, method, path, body=b"", content_type="application/wasm"):
        conn = http.client.HTTPConnection(self.admin, timeout=120)
        conn.request(method, path, body=body, headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Type": content_type})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        return data

    def deploy(self, name, wasm, manifest=None):
        if manifest is None:
            return self.admin_call("PUT", f"/v1/services/{name}", wasm)
        boundary = "shoal-bench-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n{manifest}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"component\"; filename=\"c.wasm\"\r\n\r\n"
                ).encode() + wasm + f"\r\n--{boundary}--\r\n".encode()
        return self.admin_call("PUT", f"/v1/services/{name}", body,
                               f"multipart/form-data; boundary={boundary}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.owned:
            shutil.rmtree(self.dir, ignore_errors=True)


def percentile(values, fraction):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))
    return ordered[index]


def a_to_b(args, rows):
    """A→B call latency on one host: in-process path vs. through the loopback socket."""
    host = Host(args.shoal)
    try:
        read = lambda name: open(os.path.join(args.guests, name + ".wasm"), "rb").read()
        host.deploy("a", read("caller"))
        host.deploy("b", read("hello"))
        host.deploy("b2", read("hello"))
        # `bloop` reaches b2 through this host's own gateway: same component, real socket.
        host.admin_call("PUT", "/v1/external/bloop",
                        json.dumps({"endpoints": [host.gateway]}).encode(), "application/json")
        conn = http.client.HTTPConnection(host.gateway, timeout=30)

        def measure(query, count):
            samples = []
            for _ in range(count):
                conn.request("GET", "/a/call?" + query)
                body = conn.getresponse().read().decode()
                match = re.match(r"outcome=ok status=200 elapsed_us=(\d+)", body)
                if not match:
                    raise RuntimeError("call failed: " + body[:300])
                samples.append(int(match.group(1)))
            return samples

        paths = {"in-process": "service=b&path=/", "loopback socket": "service=bloop&path=/b2/"}
        # Every call A made to b (only A calls it), for the mean set against b's own.
        in_process = measure(paths["in-process"], args.warmup)
        measure(paths["loopback socket"], args.warmup)
        results = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, query in paths.items():  # alternate A/B in every round
                samples = measure(query, args.calls)
                if name == "in-process":
                    in_process += samples
                results[name].append((percentile(samples, 0.5), percentile(samples, 0.99)))
        medians = {}
        for name, per_round in results.items():
            p50 = statistics.median(r[0] for r in per_round)
            p99 = statistics.median(r[1] for r in per_round)
            medians[name] = p50
            rows.append(("service-to-service", f"A→B call, {name}", f"p50 {p50:.0f} µs, p99 {p99:.0f} µs",
                         f"{args.rounds}×{args.calls} sequential calls, timed inside A around the host call"))
        rows.append(("service-to-service", "loopback / in-process (p50)",
                     f"{medians['loopback socket'] / max(medians['in-process'], 1):.2f}×", "same component, same run"))
        # B's own time (admission to end of body), from the host's histogram, over the
        # same calls as A's timings: the difference of the two means is what the call
        # path adds. (A median set against a mean can come out below zero.)
        metrics = http.client.HTTPConnection(host.admin, timeout=30)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        total = sum(float(m) for m in re.findall(r'^shoal_request_duration_seconds_sum\{[^}]*service="b"[^}]*\} (\S+)$', text, re.M))
        count = sum(float(m) for m in re.findall(r'^shoal_request_duration_seconds_count\{[^}]*service="b"[^}]*\} (\S+)$', text, re.M))
        if count:
            own = total / count * 1e6
            calls = statistics.mean(in_process)
            args.figures["added"] = calls - own
            rows.append(("service-to-service", "in-process path, added to B's own time",
                         f"{calls - own:.0f} µs (A→B {calls:.0f} µs, B itself {own:.0f} µs, means)",
                         f"mean of A's {len(in_process)} timed calls minus B's mean serving time over "
                         "the same calls (it serves no others); target ≤ 50 µs"))
    finally:
        host.stop()


def h2load(url, seconds, clients, streams, h1=False, body=None, headers=()):
    """h2load against `url` for `seconds`: (requests/s, requests done, failed or errored)."""
    command = ["h2load", "-c", str(clients), "-m", str(streams), "-t", "1",
               "-D", str(seconds), "--warm-up-time", "1"]
    if h1:
        command.append("--h1")
    if body:
        command += ["-d", body]
    for header in headers:
        command += ["-H", header]
    out = subprocess.run(command + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not rate or not done:
        raise RuntimeError("h2load printed no result:\n" + out)
    bad = int(done.group(3)) + int(done.group(4)) + (int(done.group(1)) - int(done.group(2)))
    return float(rate.group(1)), int(done.group(1)), bad


def hello_request(name):
    """A length-prefixed `HelloRequest { name }`, as a gRPC client sends it."""
    message = bytes([0x0a, len(name)]) + name.encode()
    return bytes([0]) + len(message).to_bytes(4, "big") + message


GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
GRPC_CODES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
              "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
              "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"]


def grpc(args, rows):
    """gRPC: unary calls through the gateway over HTTP/2 against HTTP/1.1 on the same guest, A→B over gRPC, and tonic as the ceiling."""
    read = lambda name: open(os.path.join(args.guests, name + ".wasm"), "rb").read()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    manifest = open(os.path.join(repo, "guests/grpc-greeter/shoal.toml")).read()
    manifest = manifest.replace("[limits]\n", "[limits]\ninstance_reuse = 128\n")
    body = os.path.join(tempfile.mkdtemp(prefix="shoal-bench-grpc-"), "hello.bin")
    with open(body, "wb") as f:
        f.write(hello_request("Ada"))
    servers = []
    host = Host(args.shoal)
    try:
        host.deploy("greeter", read("grpc_greeter"), manifest)
        gateway = f"http://{host.gateway}"
        workloads = {
            "shoal, gRPC unary, 1 connection × 64 streams": (
                f"{gateway}/helloworld.Greeter/SayHello", dict(clients=1, streams=64, body=body, headers=GRPC_HEADERS)),
            "shoal, gRPC unary, 8 connections × 8 streams": (
                f"{gateway}/helloworld.Greeter/SayHello", dict(clients=8, streams=8, body=body, headers=GRPC_HEADERS)),
            "shoal, HTTP/1.1 GET, 64 connections": (
                f"{gateway}/greeter/hello?name=Ada", dict(clients=64, streams=1, h1=True)),
            "shoal, HTTP/2 GET (h2c), 1 connection × 64 streams": (
                f"{gateway}/greeter/hello?name=Ada", dict(clients=1, streams=64)),
        }
        tonic = os.environ.get("SHOAL_BENCH_TONIC")
        if tonic and os.path.exists(tonic):
            port = free_port()
            servers.append(subprocess.Popen([tonic, f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
            wait_until(30, "the tonic greeter", lambda: port_open(port), pause=0.05)
            workloads["tonic (native), gRPC unary, 1 connection × 64 streams"] = (
                f"http://127.0.0.1:{port}/helloworld.Greeter/SayHello",
                dict(clients=1, streams=64, body=body, headers=GRPC_HEADERS))
        else:
            rows.append(("grpc", "tonic (native) hello world", "not measured",
                         "scripts/bench.sh builds tests/grpc/tonic-greeter and sets SHOAL_BENCH_TONIC"))
        for url, options in workloads.values():
            h2load(url, 1, **options)  # warm-up
        results = {name: [] for name in workloads}
        for _ in range(args.rounds):
            for name, (url, options) in workloads.items():
                results[name].append(h2load(url, args.seconds, **options))
        # Every gRPC call Shoal answered was an OK status, not only an HTTP 200.
        metrics = http.client.HTTPConnection(host.admin, timeout=30)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        statuses = {}
        for code, count in re.findall(
                r'^shoal_rpc_server_duration_seconds_count\{[^}]*rpc_grpc_status_code="(\d+)"[^}]*\} (\S+)$', text, re.M):
            name = GRPC_CODES[int(code)] if int(code) < len(GRPC_CODES) else code
            statuses[name] = statuses.get(name, 0) + float(count)
        seen = ", ".join(f"{count:,.0f} {name}" for name, count in sorted(statuses.items(), key=lambda kv: -kv[1]))
        rate = {}
        for name, runs in results.items():
            rate[name] = statistics.median(r[0] for r in runs)
            failed = sum(r[2] for r in runs)
            spread = f"{min(r[0] for r in runs):,.0f}–{max(r[0] for r in runs):,.0f}"
            how = f"h2load -t1 -D{args.seconds}s, rounds {spread} req/s, {failed} failed"
            if "gRPC" in name and name.startswith("shoal"):
                how += f"; statuses of all gRPC rows together: {seen} (host metrics)"
                if "CANCELLED" in statuses:
                    how += "; CANCELLED are the streams h2load resets when its time is up"
            rows.append(("grpc", name, f"{rate[name]:,.0f} calls/s" if "gRPC" in name else f"{rate[name]:,.0f} req/s", how))
        grpc_one = rate["shoal, gRPC unary, 1 connection × 64 streams"]
        rows.append(("grpc", "gRPC over one connection ÷ HTTP/1.1 over 64",
                     f"{grpc_one / rate['shoal, HTTP/1.1 GET, 64 connections']:.2f}×",
                     "same guest logic (SayHello vs GET /hello), same run, instance_reuse = 128"))
        args.figures["grpc_vs_h1"] = grpc_one / rate["shoal, HTTP/1.1 GET, 64 connections"]
        tonic_name = "tonic (native), gRPC unary, 1 connection × 64 streams"
        if tonic_name in rate:
            args.figures["grpc_vs_tonic"] = grpc_one / rate[tonic_name]
            rows.append(("grpc", "shoal ÷ tonic, gRPC unary", f"{grpc_one / rate[tonic_name]:.2f}×",
                         "the same load on both, same run; tonic is the native ceiling"))
        rows.append(("grpc", "wasmtime serve", "no HTTP/2",
                     "wasmtime serve 48 answers HTTP/1.1 only: an h2c request gets no answer, so it has no gRPC row"))
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
        host.stop()
    grpc_a_to_b(args, rows)


def grpc_a_to_b(args, rows):
    """What the call path adds to a gRPC call A→B on one host, beside an HTTP call to the same B."""
    read = lambda name: open(os.path.join(args.guests, name + ".wasm"), "rb").read()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    host = Host(args.shoal)
    try:
        host.deploy("a", read("caller"))
        host.deploy("greeter", read("grpc_greeter"),
                    open(os.path.join(repo, "guests/grpc-greeter/shoal.toml")).read())
        conn = http.client.HTTPConnection(host.gateway, timeout=30)

        def grpc_call():
            conn.request("GET", "/a/grpc-hello?service=greeter&name=Ada")
            response = conn.getresponse()
            body = response.read().decode()
            if not body.startswith("code=Ok message=Hello Ada"):
                raise RuntimeError("gRPC call failed: " + body[:300])
            return int(response.getheader("x-elapsed-us"))

        def http_call():
            conn.request("GET", "/a/call?service=greeter&path=/hello%3Fname%3DAda")
            body = conn.getresponse().read().decode()
            match = re.match(r"outcome=ok status=200 elapsed_us=(\d+)", body)
            if not match:
                raise RuntimeError("HTTP call failed: " + body[:300])
            return int(match.group(1))

        calls = {"gRPC": grpc_call, "HTTP": http_call}
        timed = {name: [] for name in calls}
        for call in calls.values():
            for _ in range(args.warmup):
                call()
        for _ in range(args.rounds):
            for name, call in calls.items():
                timed[name] += [call() for _ in range(args.calls)]
        metrics = http.client.HTTPConnection(host.admin, timeout=30)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()

        def own(method):
            total = sum(float(m) for m in re.findall(
                rf'^shoal_request_duration_seconds_sum\{{[^}}]*method="{method}"[^}}]*service="greeter"[^}}]*\}} (\S+)$', text, re.M))
            count = sum(float(m) for m in re.findall(
                rf'^shoal_request_duration_seconds_count\{{[^}}]*method="{method}"[^}}]*service="greeter"[^}}]*\}} (\S+)$', text, re.M))
            return total / count * 1e6 if count else None

        for name, method in (("gRPC", "POST"), ("HTTP", "GET")):
            mean = statistics.mean(timed[name])
            b = own(method)
            if b is None:
                continue
            if name == "gRPC":
                args.figures["grpc_added"] = mean - b
            rows.append(("grpc", f"A→B {name} call, added to B's own time",
                         f"{mean - b:.0f} µs (A→B {mean:.0f} µs, B itself {b:.0f} µs, means; p50 {percentile(timed[name], 0.5)} µs)",
                         f"{args.rounds}×{args.calls} sequential calls alternated with the other protocol, timed inside A; "
                         "B is the greeter (SayHello over gRPC, GET /hello over HTTP), its own time from the host's histogram"))
    finally:
        host.stop()


def port_open(port):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def instantiation(args, rows):
    """Per-request instantiation (fresh store + instantiate): pooling allocator vs. on-demand."""
    hello = os.path.join(args.guests, "hello.wasm")
    results = {"pooling": [], "on-demand": []}
    for _ in range(args.rounds):
        for mode in results:  # alternate in every round
            command = [args.shoal, "bench-instantiate", hello, "--iterations", str(args.instantiations)]
            if mode == "on-demand":
                command.append("--no-pooling")
            out = subprocess.run(command, capture_output=True, text=True, check=True,
                                 env=dict(os.environ, SHOAL_LOG="warn")).stdout
            results[mode].append(json.loads(out.strip().splitlines()[-1]))
    medians = {}
    for mode, runs in results.items():
        mean = statistics.median(r["mean_us"] for r in runs)
        p99 = statistics.median(r["p99_us"] for r in runs)
        medians[mode] = mean
        rows.append(("instantiation", f"{mode} allocator", f"{mean:.1f} µs mean, p99 {p99:.1f} µs",
                     f"{args.rounds}×{args.instantiations} instantiations of hello (Rust SDK), `shoal bench-instantiate`"))
    args.figures["instantiation"] = medians["pooling"]
    rows.append(("instantiation", "on-demand / pooling", f"{medians['on-demand'] / medians['pooling']:.2f}×", "same run"))
    # Levers: how much of each pooled memory, table and stack is reset in place (kept
    # resident) instead of handed back to the kernel when an instance ends, and whether
    # the kernel is asked which of those pages were written (PAGEMAP_SCAN) so only they
    # are reset.
    variants = {f"{size}": ["--keep-resident-kb", str(size)] for size in (0, 16, 64, 256)}
    variants["64 without pagemap scan"] = ["--keep-resident-kb", "64", "--no-pagemap-scan"]
    kept = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, flags in variants.items():
            command = [args.shoal, "bench-instantiate", hello, "--iterations", str(args.instantiations), *flags]
            out = subprocess.run(command, capture_output=True, text=True, check=True,
                                 env=dict(os.environ, SHOAL_LOG="warn")).stdout
            kept[name].append(json.loads(out.strip().splitlines()[-1])["mean_us"])
    rows.append(("instantiation", "pooling, keep resident 0 / 16 / 64 / 256 KiB; 64 KiB without pagemap scan",
                 " / ".join(f"{statistics.median(kept[name]):.1f}" for name in variants) + " µs mean",
                 "`--keep-resident-kb` (default 64; pagemap scan on where the kernel has it), "
                 "`--no-pagemap-scan`, same run, alternated"))


def wrk(url, connections, seconds, threads=1):
    """Run wrk; return (requests/s, p50 ms, p99 ms, non-2xx/3xx count)."""
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def latency(percent):
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rate, latency(50), latency(99), int(errors.group(1)) if errors else 0


def fault_storm(args, rows):
    """Gateway throughput of one service, alone and beside another service's fault storm."""
    host = Host(args.shoal)
    try:
        read = lambda name: open(os.path.join(args.guests, name + ".wasm"), "rb").read()
        roomy = "[limits]\nmemory_mb = 16\nmax_concurrency = 1000\nqueue = 10000\n"
        host.deploy("hello", read("hello"), roomy)
        host.deploy("faulty", read("faulty"), roomy)
        url = f"http://{host.gateway}/hello/"
        storm_url = f"http://{host.gateway}/faulty/trap"
        wrk(url, 16, 1)  # warm-up
        alone, stormy, storm_rates = [], [], []
        for _ in range(args.rounds):
            alone.append(wrk(url, 32, args.seconds))
            storm = subprocess.Popen(["wrk", "-t1", "-c8", f"-d{args.seconds + 1}s", storm_url],
                                     stdout=subprocess.PIPE, text=True)
            time.sleep(0.3)
            stormy.append(wrk(url, 32, args.seconds))
            storm_out = storm.communicate()[0]
            found = re.search(r"Requests/sec:\s+([\d.]+)", storm_out)
            storm_rates.append(float(found.group(1)) if found else 0.0)
        a = statistics.median(r[0] for r in alone)
        b = statistics.median(r[0] for r in stormy)
        failures = sum(r[3] for r in alone + stormy)
        rows.append(("isolation", "hello alone", f"{a:,.0f} req/s, p50 {statistics.median(r[1] for r in alone):.2f} ms, "
                     f"p99 {statistics.median(r[2] for r in alone):.2f} ms", f"wrk -t1 -c32 -d{args.seconds}s, fresh instance per request"))
        rows.append(("isolation", "hello beside a trap storm", f"{b:,.0f} req/s, p50 {statistics.median(r[1] for r in stormy):.2f} ms, "
                     f"p99 {statistics.median(r[2] for r in stormy):.2f} ms",
                     f"same, while wrk -c8 drives faulty/trap at {statistics.median(storm_rates):,.0f} traps/s"))
        rows.append(("isolation", "storm / alone (hello throughput)", f"{b / a:.2f}×",
                     f"hello failures during all runs: {failures} (2 cores shared by host, wrk and the storm)"))
    finally:
        host.stop()


def find_wasmtime():
    """The `wasmtime` 48 CLI, if installed (scripts/bench.sh installs it)."""
    path = shutil.which("wasmtime") or os.path.expanduser("~/.cargo/bin/wasmtime")
    if not os.path.exists(path):
        return None
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    return path if "48.0.8" in version else None


class Server:
    """A background server process that prints nothing we need; ready when its port
    answers."""

    def __init__(self, command, address, env=None):
        self.address = address
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 120
        while True:
            try:
                conn = http.client.HTTPConnection(address, timeout=2)
                conn.request("GET", "/")
                conn.getresponse().read()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{command[0]} did not start")
                time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GATEWAY_MANIFEST = "[limits]\nmemory_mb = 16\nmax_concurrency = 1000\nqueue = 10000\n"

# The components every server runs in the gateway rows: (label, file).
GATEWAY_COMPONENTS = [("plain", "plain_http.wasm"), ("hello", "wasi_hello.wasm")]


def start_servers(args, component, threads=None):
    """Shoal and `wasmtime serve` serving `component`, each fresh per request and with
    reuse 128. Returns (servers to stop, {name: url}). `threads` sets the threads that
    serve requests on both: tokio's worker threads (TOKIO_WORKER_THREADS, which both
    read) and Shoal's gateway serving threads (SHOAL_GATEWAY_THREADS)."""
    env = dict(os.environ)
    if threads:
        env["TOKIO_WORKER_THREADS"] = str(threads)
        env["SHOAL_GATEWAY_THREADS"] = str(threads)
    wasm = open(component, "rb").read()
    host = Host(args.shoal, env=env)
    servers = [host]
    host.deploy("fresh", wasm, GATEWAY_MANIFEST)
    host.deploy("reuse", wasm, GATEWAY_MANIFEST + "instance_reuse = 128\n")
    urls = {"shoal serve": f"http://{host.gateway}/fresh/",
            "shoal serve, reuse 128": f"http://{host.gateway}/reuse/"}
    wasmtime = find_wasmtime()
    if wasmtime:
        for name, extra in (("wasmtime serve", []), ("wasmtime serve, reuse 128", ["--max-instance-reuse-count", "128"])):
            port = free_port()
            servers.append(Server([wasmtime, "serve", *WASMTIME_SERVE_BEST, *extra, "--addr", f"127.0.0.1:{port}", component],
                                  f"127.0.0.1:{port}", env=env))
            urls[name] = f"http://127.0.0.1:{port}/"
    return servers, urls


def alternate(args, urls):
    """wrk each of `urls` after a warm-up, in rounds of A/B/A/B with the same connections
    and duration; {name: [wrk results]}."""
    for url in urls.values():
        wrk(url, 16, 1)
    results = {name: [] for name in urls}
    for _ in range(args.rounds):
        for name, url in urls.items():
            results[name].append(wrk(url, 64, args.seconds, threads=2))
    return results


def gateway_throughput(args, rows):
    """Gateway throughput: the same wasi:http components under shoal, wasmtime serve, and native hyper."""
    wasmtime = find_wasmtime()
    if not wasmtime:
        rows.append(("gateway", "wasmtime serve", "not measured",
                     "wasmtime-cli 48.0.8 is not installed (scripts/bench.sh installs it)"))
    args.saturation = {}
    for label, file in GATEWAY_COMPONENTS:
        component = os.path.join(args.guests, file)
        servers, urls = start_servers(args, component)
        try:
            if label == "plain":
                port = free_port()
                servers.append(Server([args.shoal, "bench-native-hello", "--listen", f"127.0.0.1:{port}"], f"127.0.0.1:{port}"))
                urls["native hyper"] = f"http://127.0.0.1:{port}/"
            results = alternate(args, urls)
        finally:
            for server in servers:
                server.stop()
        rate = {}
        for name, runs in results.items():
            rate[name] = statistics.median(r[0] for r in runs)
            how = (f"wrk -t2 -c64 -d{args.seconds}s, hyper hello world (ceiling)" if name == "native hyper" else
                   f"wrk -t2 -c64 -d{args.seconds}s, {file}, "
                   + ("one instance per 128 requests" if "reuse" in name else "fresh instance per request"))
            rows.append(("gateway", f"{label}: {name}", f"{rate[name]:,.0f} req/s, p50 {statistics.median(r[1] for r in runs):.2f} ms, "
                         f"p99 {statistics.median(r[2] for r in runs):.2f} ms", how))
        args.saturation[label] = rate
        if "wasmtime serve" in rate:
            fresh = rate["shoal serve"] / rate["wasmtime serve"]
            reuse = rate["shoal serve, reuse 128"] / rate["wasmtime serve, reuse 128"]
            args.figures[f"fresh_{label}"] = fresh
            args.figures[f"reuse_{label}"] = reuse
            rows.append(("gateway", f"{label}: shoal / wasmtime serve", f"{fresh:.2f}×",
                         "fresh instance per request on both"))
            rows.append(("gateway", f"{label}: shoal / wasmtime serve, both reusing 128", f"{reuse:.2f}×", "same run"))
        if "native hyper" in rate:
            rows.append(("gateway", f"{label}: shoal / native hyper", f"{rate['shoal serve'] / rate['native hyper']:.2f}×", "same run"))


P3_MANIFEST = GATEWAY_MANIFEST + "instance_reuse = 128\ninstance_concurrency = 16\n"
P3_WASMTIME = ["--max-instance-reuse-count", "128", "--max-instance-concurrent-reuse-count", "16"]


def start_p3_servers(args):
    """Shoal and `wasmtime serve` serving p3_hello.wasm, 16 requests at once per instance
    and 128 in its life on both. Returns (servers to stop, {name: url}), in the same order."""
    component = os.path.join(args.guests, "p3_hello.wasm")
    host = Host(args.shoal)
    servers = [host]
    urls = {}
    try:
        host.deploy("p3", open(component, "rb").read(), P3_MANIFEST)
        urls["shoal serve, p3"] = f"http://{host.gateway}/p3/"
        wasmtime = find_wasmtime()
        if wasmtime:
            port = free_port()
            servers.append(Server([wasmtime, "serve", *WASMTIME_SERVE_BEST, *P3_WASMTIME,
                                   "--addr", f"127.0.0.1:{port}", component], f"127.0.0.1:{port}"))
            urls["wasmtime serve, p3"] = f"http://127.0.0.1:{port}/"
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers, urls


def wasip3_concurrency(args, rows):
    """WASIp3: the same p3 component, instances serving 16 requests at once on both servers."""
    servers, urls = start_p3_servers(args)
    try:
        results = alternate(args, urls)
    finally:
        for server in servers:
            server.stop()
    rate = {}
    for name, runs in results.items():
        rate[name] = statistics.median(r[0] for r in runs)
        how = (f"wrk -t2 -c64 -d{args.seconds}s, p3_hello.wasm (wasi:http/handler@0.3.0), "
               + ("`instance_reuse = 128`, `instance_concurrency = 16`" if name.startswith("shoal")
                  else " ".join(P3_WASMTIME)))
        rows.append(("wasip3", name, f"{rate[name]:,.0f} req/s, p50 {statistics.median(r[1] for r in runs):.2f} ms, "
                     f"p99 {statistics.median(r[2] for r in runs):.2f} ms", how))
    if "wasmtime serve, p3" in rate:
        ratio = rate["shoal serve, p3"] / rate["wasmtime serve, p3"]
        args.figures["p3"] = ratio
        rows.append(("wasip3", "shoal / wasmtime serve, p3 concurrent reuse", f"{ratio:.2f}×", "same run"))
    else:
        rows.append(("wasip3", "wasmtime serve, p3", "not measured",
                     "wasmtime-cli 48.0.8 is not installed (scripts/bench.sh installs it)"))


def core_scaling(args, rows):
    """Cores: throughput with 1 and 2 server threads, and the gateway's cost over an in-process call."""
    component = os.path.join(args.guests, "wasi_hello.wasm")
    rate = {}
    for threads in (1, 2):
        servers, urls = start_servers(args, component, threads=threads)
        try:
            for url in urls.values():
                wrk(url, 16, 1)
            runs = {name: [] for name in urls}
            for _ in range(args.rounds):
                for name, url in urls.items():
                    runs[name].append(wrk(url, 64, args.seconds, threads=1)[0])
            for name, values in runs.items():
                rate[(name, threads)] = statistics.median(values)
        finally:
            for server in servers:
                server.stop()
    for name in sorted({name for name, _ in rate}):
        one, two = rate[(name, 1)], rate[(name, 2)]
        rows.append(("cores", name, f"{one:,.0f} → {two:,.0f} req/s ({two / one:.2f}×)",
                     f"TOKIO_WORKER_THREADS (and Shoal's SHOAL_GATEWAY_THREADS)=1 then 2; wrk -t1 -c64 -d{args.seconds}s on the same 2 cores, wasi_hello.wasm"))
    # The floor: the same request handled in process, no socket and no HTTP parsing.
    floors = []
    for _ in range(args.rounds):
        out = subprocess.run([args.shoal, "bench-instantiate", component, "--handle", "--iterations",
                              str(args.instantiations // 4)], capture_output=True, text=True, check=True,
                             env=dict(os.environ, SHOAL_LOG="warn")).stdout
        floors.append(json.loads(out.strip().splitlines()[-1])["mean_us"])
    floor_us = statistics.median(floors)
    gateway = rate[("shoal serve", 1)]
    overhead = gateway / (1e6 / floor_us)
    args.figures["gateway_overhead"] = overhead
    rows.append(("cores", "in-process floor", f"{floor_us:.1f} µs per request ({1e6 / floor_us:,.0f} req/s on one thread)",
                 "`shoal bench-instantiate --handle`: fresh instance + GET / + whole body, no gateway"))
    rows.append(("cores", "gateway ÷ floor, one thread", f"{overhead:.2f}×",
                 "shoal serve with one serving thread (wrk on the other core) ÷ the in-process rate"))


def perf_top(pid, seconds):
    """`perf record` of `pid` for `seconds`; the report's entries by object and by
    symbol, each as [(percent, name)]."""
    data = tempfile.mktemp(prefix="shoal-perf-")
    subprocess.run(["perf", "record", "-F", "999", "-p", str(pid), "-o", data, "--", "sleep", str(seconds)],
                   capture_output=True, check=True)
    tops = []
    for key in ("dso", "sym"):
        out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", key, "-g", "none", "--stdio"],
                             capture_output=True, text=True, check=True).stdout
        entries = []
        for line in out.splitlines():
            match = re.match(r"^\s+([\d.]+)%\s+(.*\S)\s*$", line)
            if match:
                entries.append((float(match.group(1)), match.group(2)))
        tops.append(entries)
    os.unlink(data)
    return tops


def thread_counters(pid):
    """CPU seconds and voluntary and involuntary context switches of `pid`, summed over
    its threads (from /proc; a thread that ends meanwhile drops out)."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu = voluntary = involuntary = 0
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            fields = open(f"{task}/stat").read().rsplit(")", 1)[1].split()
            status = open(f"{task}/status").read()
        except OSError:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / tick
        voluntary += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        involuntary += int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
    return cpu, voluntary, involuntary


def per_request_costs(pid, url, seconds):
    """Under `wrk -t2 -c64` for `seconds`, with no profiler attached: requests/s, and CPU
    µs, voluntary and involuntary context switches per request of `pid`."""
    before = thread_counters(pid)
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", url],
                         capture_output=True, text=True, check=True).stdout
    after = thread_counters(pid)
    requests = max(1, int(re.search(r"(\d+) requests in", out).group(1)))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    cpu, voluntary, involuntary = (b - a for a, b in zip(before, after))
    return rate, cpu / requests * 1e6, voluntary / requests, involuntary / requests


def compare_costs(args, seconds, targets, section, label):
    """Per-request costs of the two (name, process, url) `targets`, measured in
    alternated rounds: rows with each one's medians and their ratio."""
    costs = {name: [] for name, _, _ in targets}
    for _, _, url in targets:
        wrk(url, 16, 1)
    for _ in range(args.rounds):
        for name, proc, url in targets:
            costs[name].append(per_request_costs(proc.pid, url, seconds))
    median = {name: [statistics.median(values) for values in zip(*runs)] for name, runs in costs.items()}
    how = f"wrk -t2 -c64 -d{seconds}s, /proc of the server (CPU of all its threads, context switches), no profiler"
    rows = [(section, f"{label}: {name}, per request",
             f"{cpu:.1f} µs CPU, {involuntary:.2f} involuntary + {voluntary:.3f} voluntary context switches "
             f"at {rate:,.0f} req/s", how)
            for name, (rate, cpu, voluntary, involuntary) in median.items()]
    (first, a), (second, b) = median.items()
    rows.append((section, f"{label}: CPU per request, {first} / {second}", f"{a[1] / b[1]:.2f}×",
                 "same run, alternated rounds"))
    return rows


def profile_servers(seconds, title, targets):
    """Markdown of `perf` profiles of each (name, process, url) in `targets` under load."""
    lines = [f"### {title}", ""]
    for name, proc, url in targets:
        wrk(url, 16, 1)
        load = subprocess.Popen(["wrk", "-t2", "-c64", f"-d{seconds + 2}s", url], stdout=subprocess.DEVNULL)
        time.sleep(1)
        by_dso, by_sym = perf_top(proc.pid, seconds)
        load.wait()
        lines.append(f"**{name}** — by object: " + ", ".join(f"{dso} {pct:.0f} %" for pct, dso in by_dso[:4]))
        lines.append("")
        lines.append("| self | symbol |")
        lines.append("|---|---|")
        lines += [f"| {pct:.1f} % | `{sym[:110]}` |" for pct, sym in by_sym[:15]]
        lines.append("")
    return lines


def profile(args, rows):
    """Profile: where a request's time goes, shoal and wasmtime serve reusing instances
    (WASIp2) and serving many requests per instance (WASIp3)."""
    if not shutil.which("perf") or not find_wasmtime():
        rows.append(("profile", "perf", "not measured", "needs perf and wasmtime-cli 48.0.8"))
        return
    seconds = max(2, args.seconds // 2)
    lines = ["", "## Profile", "",
             f"`perf record -F 999` of each server for {seconds} s under `wrk -t2 -c64`; self time, top entries. "
             "In this VM, time in the kernel lands mostly on the scheduler's context-switch and interrupt-return "
             "symbols, and on loopback delivery to the client.", ""]
    servers, urls = start_servers(args, os.path.join(args.guests, "wasi_hello.wasm"))
    try:
        targets = [("shoal serve, reuse 128", servers[0].proc, urls["shoal serve, reuse 128"]),
                   ("wasmtime serve, reuse 128", servers[-1].proc, urls["wasmtime serve, reuse 128"])]
        rows += compare_costs(args, seconds, targets, "profile", "wasi_hello.wasm")
        lines += profile_servers(seconds, "WASIp2, instance reuse 128 on both (wasi_hello.wasm)", targets)
    finally:
        for server in servers:
            server.stop()
    servers, urls = start_p3_servers(args)
    try:
        targets = [(name, server.proc, urls[name]) for server, name in zip(servers, urls)]
        rows += compare_costs(args, seconds, targets, "profile", "p3_hello.wasm")
        lines += profile_servers(seconds, "WASIp3, 16 requests at once per instance on both (p3_hello.wasm)",
                                 targets)
    finally:
        for server in servers:
            server.stop()
    args.appendix += lines


def hey(url, rate, connections, seconds):
    """Run hey at a fixed total rate; return (p50 ms, p99 ms, requests/s, errors)."""
    per_worker = max(1, round(rate / connections))
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(connections), "-q", str(per_worker), url],
                         capture_output=True, text=True, check=True).stdout

    def latency(percent):
        match = re.search(rf"^\s+{percent}% in ([\d.]+) secs", out, re.M)
        return float(match.group(1)) * 1000 if match else float("nan")

    achieved = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    codes = dict((int(code), int(count)) for code, count in re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    errors = sum(count for code, count in codes.items() if code != 200)
    return latency(50), latency(99), achieved, errors


def latency_at_half_load(args, rows):
    """Latency at half load: p50/p99 of shoal and wasmtime serve at the same fixed rate."""
    saturation = getattr(args, "saturation", {}).get("hello")
    if not find_wasmtime() or not shutil.which("hey") or not saturation:
        rows.append(("latency", "at half load", "not measured",
                     "needs wasmtime-cli 48.0.8, hey and the gateway section (scripts/bench.sh installs them)"))
        return
    component = os.path.join(args.guests, "wasi_hello.wasm")
    servers, urls = start_servers(args, component)
    try:
        for mode in ("", ", reuse 128"):
            shoal, peer = f"shoal serve{mode}", f"wasmtime serve{mode}"
            rate = 0.5 * min(saturation[shoal], saturation[peer])
            results = {shoal: [], peer: []}
            for _ in range(args.rounds):
                for name in results:
                    results[name].append(hey(urls[name], rate, 32, args.seconds))
            p99 = {}
            for name, runs in results.items():
                p99[name] = statistics.median(r[1] for r in runs)
                rows.append(("latency", name, f"p50 {statistics.median(r[0] for r in runs):.2f} ms, p99 {p99[name]:.2f} ms "
                             f"at {statistics.median(r[2] for r in runs):,.0f} req/s",
                             f"hey -c32 -z{args.seconds}s at {rate:,.0f} req/s: half the slower server's saturation "
                             f"(wasi_hello.wasm); errors {sum(r[3] for r in runs)}"))
            ratio = p99[shoal] / p99[peer]
            args.figures["p99" + ("_reuse" if mode else "")] = ratio
            rows.append(("latency", f"p99 shoal / wasmtime serve{mode}", f"{ratio:.2f}×", "same rate, same run"))
    finally:
        for server in servers:
            server.stop()


def deploy_latency(args, rows):
    """Deploy: upload to first 200 on a new host (nothing cached), a second component
    of the same toolchain (its shared code in the function cache), and the same bytes
    again (the compiled-code cache). Big components serve first on baseline (Winch)
    code; the same deploy waiting for optimised (Cranelift) code is measured beside it."""
    hello = open(os.path.join(args.guests, "hello.wasm"), "rb").read()
    deploy_one(args, rows, "hello (Rust SDK)", hello, None, args.rounds)
    rounds = 1 if args.quick else min(args.rounds, 3)
    greeter = os.path.join(args.guests, "python_greeter.wasm")
    if args.large and os.path.exists(args.large):
        large = open(args.large, "rb").read()
        sibling = open(greeter, "rb").read() if os.path.exists(greeter) else None
        deploy_one(args, rows, "python hello (componentize-py)", large, sibling, rounds)
        deploy_one(args, rows, "python hello (componentize-py), --no-baseline", large, sibling,
                   rounds, ["--no-baseline"])
        baseline_speed(args, rows, "python hello (componentize-py)", args.large)
    else:
        rows.append(("deploy", "large (Python) component", "not measured", "componentize-py not installed (scripts/bench.sh installs it)"))
    js = os.path.join(args.guests, "js_greeter.wasm")
    if os.path.exists(js):
        component = open(js, "rb").read()
        deploy_one(args, rows, "js greeter (componentize-js)", component, None, rounds)
        deploy_one(args, rows, "js greeter (componentize-js), --no-baseline", component, None,
                   rounds, ["--no-baseline"])
    else:
        rows.append(("deploy", "large (JavaScript) component", "not measured", "scripts/polyglot.sh builds it"))


def first_200(host, name, wasm):
    """Milliseconds from the upload of `wasm` as `name` to its first 200."""
    started = time.perf_counter()
    # The greeters publish each visit: they declare the topic.
    host.deploy(name, wasm, '[events]\npublishes = ["greeting.sent"]\n')
    conn = http.client.HTTPConnection(host.gateway, timeout=60)
    conn.request("GET", f"/{name}/")
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"first request answered {response.status}")
    return (time.perf_counter() - started) * 1000


def deploy_one(args, rows, label, component, sibling, rounds, extra=()):
    samples = {"new host, nothing cached": []}
    if sibling is not None:
        samples["another app of the same toolchain"] = []
    samples["same bytes again"] = []
    for round_ in range(rounds):
        # A new host each round, so its caches start empty.
        host = Host(args.shoal, extra)
        try:
            samples["new host, nothing cached"].append(first_200(host, "cold", component))
            if sibling is not None:
                samples["another app of the same toolchain"].append(first_200(host, "sibling", sibling))
            samples["same bytes again"].append(first_200(host, "again", component))
        finally:
            host.stop()
    if label.startswith("hello"):
        args.figures["cached_deploy"] = statistics.median(samples["same bytes again"])
    else:
        key = "cold_deploy_waiting" if "--no-baseline" in extra else "cold_deploy"
        cold = statistics.median(samples["new host, nothing cached"])
        args.figures[key] = max(args.figures.get(key, 0.0), cold)
    tier = "optimised code only" if "--no-baseline" in extra else "baseline code first when big"
    how = {
        "new host, nothing cached": f"compile everything ({tier})",
        "another app of the same toolchain": f"python-greeter after python-hello ({tier})",
        "same bytes again": "compiled-code cache hit, or baseline code again while the first optimises",
    }
    for mode, values in samples.items():
        rows.append(("deploy", f"{label}, {len(component) / 1024 / 1024:.2f} MiB, {mode}",
                     f"{statistics.median(values):.1f} ms upload → first 200",
                     f"PUT over HTTP incl. validation, {how[mode]}, fsync, first request"))


def baseline_speed(args, rows, label, component):
    """How much slower baseline code runs than optimised code, until the swap: one
    request handled in-process per fresh instance, both tiers of the same component."""
    iterations = "20" if args.quick else "300"
    means = {}
    for tier in ("optimized", "baseline"):
        command = [args.shoal, "bench-instantiate", component, "--handle", "--iterations", iterations]
        if tier == "baseline":
            command.append("--baseline")
        out = subprocess.run(command, capture_output=True, text=True, check=True,
                             env=dict(os.environ, SHOAL_LOG="warn")).stdout
        means[tier] = json.loads(out.strip().splitlines()[-1])["mean_us"]
        rows.append(("deploy", f"{label}, one request on {tier} code", f"{means[tier]:.0f} µs mean",
                     f"{iterations} × (fresh instance + GET / read to the end), in-process, `shoal bench-instantiate --handle`"))
    args.figures["baseline_slowdown"] = means["baseline"] / means["optimized"]
    rows.append(("deploy", f"{label}, baseline ÷ optimised time per request",
                 f"{means['baseline'] / means['optimized']:.2f}×", "same run; served until the optimised code is swapped in"))


def telemetry_cost(args, rows):
    """Gateway throughput with metrics and tracing on vs. off, side by side."""
    hosts = {"on": Host(args.shoal), "off": Host(args.shoal, ["--no-telemetry"])}
    try:
        hello = open(os.path.join(args.guests, "hello.wasm"), "rb").read()
        roomy = "[limits]\nmemory_mb = 16\nmax_concurrency = 1000\nqueue = 10000\n"
        for host in hosts.values():
            host.deploy("hello", hello, roomy)
            wrk(f"http://{host.gateway}/hello/", 16, 1)  # warm-up
        results = {name: [] for name in hosts}
        for _ in range(args.rounds):
            for name, host in hosts.items():  # alternate on/off in every round
                results[name].append(wrk(f"http://{host.gateway}/hello/", 32, args.seconds))
        rate = {name: statistics.median(r[0] for r in runs) for name, runs in results.items()}
        for name in hosts:
            rows.append(("telemetry", f"hello, metrics + tracing {name}", f"{rate[name]:,.0f} req/s",
                         f"wrk -t1 -c32 -d{args.seconds}s; spans made but not exported (no OTLP endpoint)"))
        rows.append(("telemetry", "on / off (throughput)", f"{rate['on'] / rate['off']:.2f}×", "same run, alternated"))
    finally:
        for host in hosts.values():
            host.stop()


def recording_cost(args, rows):
    """Gateway throughput with request recording off, on for failures only, and on for every
    request: for `hello` (one config read, one log line a request) and `counter` reading its
    store (one store read a request, each kept in the request's journal when recorded)."""
    host = Host(args.shoal, ["--max-recordings", "1000"])
    try:
        roomy = "[limits]\nmemory_mb = 16\nmax_concurrency = 1000\nqueue = 10000\ninstance_reuse = 128\n"
        modes = {"off": "off", "failed (none fail)": "failed", "every request": "1.0"}
        workloads = {"hello": ("hello", "/"), "store read": ("counter", "/get?key=k")}
        urls = {}
        for label, (component, path) in workloads.items():
            wasm = open(os.path.join(args.guests, component + ".wasm"), "rb").read()
            for index, (mode, record) in enumerate(modes.items()):
                value = record if record.replace(".", "").isdigit() else f'"{record}"'
                name = f"rec-{component}-{index}"
                host.deploy(name, wasm, roomy + f"[debug]\nrecord = {value}\n")
                urls[(label, mode)] = f"http://{host.gateway}/{name}{path}"
        for url in urls.values():
            wrk(url, 16, 1)  # warm-up
        results = {key: [] for key in urls}
        for _ in range(args.rounds):
            for key, url in urls.items():  # alternated in every round
                results[key].append(wrk(url, 32, args.seconds))
        rate = {key: statistics.median(r[0] for r in runs) for key, runs in results.items()}
        for (label, mode) in urls:
            runs = results[(label, mode)]
            spread = f"{min(r[0] for r in runs):,.0f}–{max(r[0] for r in runs):,.0f}"
            rows.append(("recording", f"{label}, recording {mode}", f"{rate[(label, mode)]:,.0f} req/s",
                         f"wrk -t1 -c32 -d{args.seconds}s, instance_reuse = 128, rounds {spread}"))
        for label in workloads:
            failed = rate[(label, "failed (none fail)")] / rate[(label, "off")]
            every = rate[(label, "every request")] / rate[(label, "off")]
            key = "" if label == "hello" else "_store"
            args.figures[f"recording_failed{key}"] = failed
            args.figures[f"recording_all{key}"] = every
            rows.append(("recording", f"{label}: failed-only ÷ off (throughput)", f"{failed:.2f}×",
                         "same run; every request keeps what it receives in a journal, dropped "
                         "with an answer that did not fail"))
            rows.append(("recording", f"{label}: every request ÷ off (throughput)", f"{every:.2f}×",
                         "same run; each kept request is a file write off the serving path (at most "
                         "64 pending, the rest dropped and counted)"))
    finally:
        host.stop()


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def leb128(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def distinct_copy(component, tag):
    """The same component with a custom section naming `tag` appended: other bytes, so
    another digest and its own compiled code, the same behaviour."""
    name = b"shoal-bench"
    content = leb128(len(name)) + name + tag.encode()
    return component + b"\x00" + leb128(len(content)) + content


def density(args, rows):
    """Host memory with many idle services deployed."""
    host = Host(args.shoal)
    try:
        hello = open(os.path.join(args.guests, "hello.wasm"), "rb").read()
        time.sleep(0.5)
        base = rss_kib(host.proc.pid)
        rows.append(("density", "host with no service", f"{base / 1024:.1f} MiB RSS", "idle host, pooling allocator reserved"))
        deployed = 0
        deploying = 0.0
        for target in args.density:
            while deployed < target:
                deployed += 1
                started = time.perf_counter()
                host.deploy(f"svc-{deployed:05d}", hello)
                deploying += time.perf_counter() - started
            time.sleep(0.5)
            rss = rss_kib(host.proc.pid)
            args.figures[f"density_{target}"] = rss / 1024
            rows.append(("density", f"{target:,} idle services", f"{rss / 1024:.1f} MiB RSS, {(rss - base) / target:.0f} KiB per service",
                         "hello deployed under distinct names; the same bytes share one compiled code"))
        # Every one of them answers.
        conn = http.client.HTTPConnection(host.gateway, timeout=30)
        for index in (1, deployed):
            conn.request("GET", f"/svc-{index:05d}/")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"svc-{index:05d} answered {response.status}")
        rows.append(("density", "deploy rate (cached compile)", f"{deployed / deploying:.0f} deploys/s",
                     "sequential PUTs over HTTP, fsync before each 2xx"))
        # Distinct components: each has code of its own.
        before = rss_kib(host.proc.pid)
        for index in range(args.distinct):
            host.deploy(f"distinct-{index:04d}", distinct_copy(hello, str(index)))
        time.sleep(0.5)
        grown = rss_kib(host.proc.pid) - before
        rows.append(("density", f"{args.distinct} idle services, each its own component",
                     f"{grown / args.distinct:.0f} KiB per service",
                     "hello with a distinct custom section each: compiled and loaded once per service"))
    finally:
        host.stop()


def restore(args, rows):
    """Restart with many services deployed: process start to `/readyz` 200, cold and cached."""
    count = args.restore_services
    directory = tempfile.mkdtemp(prefix="shoal-bench-restore-")
    hello = open(os.path.join(args.guests, "hello.wasm"), "rb").read()
    faulty = open(os.path.join(args.guests, "faulty.wasm"), "rb").read()
    host = Host(args.shoal, directory=directory)
    try:
        for index in range(count):
            # Two components, so the cold restore compiles more than one.
            host.deploy(f"svc-{index:04d}", hello if index % 2 == 0 else faulty)
    finally:
        host.stop()
    cold, cached = [], []
    for _ in range(args.rounds):
        shutil.rmtree(os.path.join(directory, "data", "cache"), ignore_errors=True)
        host = Host(args.shoal, directory=directory)
        cold.append(host.ready_after)
        host.stop()
        host = Host(args.shoal, directory=directory)
        cached.append(host.ready_after)
        conn = http.client.HTTPConnection(host.gateway, timeout=30)
        conn.request("GET", "/svc-0000/")
        response = conn.getresponse()
        response.read()
        host.stop()
        if response.status != 200:
            raise RuntimeError(f"a restored service answered {response.status}")
    args.figures["restore_cold"] = statistics.median(cold)
    args.figures["restore_cached"] = statistics.median(cached)
    rows.append(("restore", f"{count} services, cold (no compile cache)", f"{statistics.median(cold) * 1000:.0f} ms to /readyz",
                 "process start to the first 200 of /readyz; two distinct components"))
    rows.append(("restore", f"{count} services, cached", f"{statistics.median(cached) * 1000:.0f} ms to /readyz",
                 "same, compiled code loaded from the cache"))
    shutil.rmtree(directory, ignore_errors=True)


def http_call(address, method, path, body=b"", timeout=60):
    conn = http.client.HTTPConnection(address, timeout=timeout)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def histogram_quantile(metrics_text, name, quantile):
    """A quantile of a Prometheus histogram from its buckets (the bucket's upper bound)."""
    buckets = []
    for line in metrics_text.splitlines():
        match = re.match(rf'{name}_bucket{{.*le="([^"]+)".*}} (\S+)', line)
        if match:
            bound = float("inf") if match.group(1) == "+Inf" else float(match.group(1))
            buckets.append((bound, float(match.group(2))))
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for bound, count in sorted(buckets):
        if count >= quantile * total:
            return bound
    return None


def deploy_shop(args, host):
    """Deploy the shop's four services with their manifests, with stock to sell."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    for name in ("inventory", "payment", "orders", "shipping"):
        manifest = open(os.path.join(root, "guests", "shop", name, "shoal.toml")).read()
        host.deploy(name, open(os.path.join(args.guests, f"{name}.wasm"), "rb").read(), manifest)
    # Stock is a private path: the operator sets it through the admin API.
    host.admin_call("PUT", "/v1/services/inventory/call/stock/widget",
                    b'{"available": 100000000}', "application/json")


def orders_per_second(args, host):
    """Orders placed per second by 16 clients at once for `args.seconds`."""
    import concurrent.futures
    body = b'{"sku": "widget", "quantity": 1}'
    deadline = time.time() + args.seconds

    def buyer():
        placed = 0
        while time.time() < deadline:
            status, _ = http_call(host.gateway, "POST", "/orders/", body)
            placed += status == 201
        return placed
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        placed = sum(pool.map(lambda _: buyer(), range(16)))
    return placed / (time.perf_counter() - started)


def shop(args, rows):
    """The shop: orders per second, store transactions against native SQLite, event delivery."""
    import concurrent.futures
    import sqlite3
    host = Host(args.shoal, ["--max-instances", "512"])
    try:
        deploy_shop(args, host)
        # `kv` publishes the benchmark's events, to `sub`.
        host.deploy("kv", open(os.path.join(args.guests, "counter.wasm"), "rb").read(),
                    '[events]\npublishes = ["bench.event"]\nsubscribers = ["sub"]\n')
        subscriber = ('[[subscriptions]]\ntopic = "bench.event"\nroute = "/events/handle"\n'
                      'max_attempts = 10\n')
        host.deploy("sub", open(os.path.join(args.guests, "counter.wasm"), "rb").read(), subscriber)
        rate = orders_per_second(args, host)
        rows.append(("shop", "orders placed", f"{rate:,.0f} orders/s",
                     f"16 clients for {args.seconds}s; each order: reserve at inventory, charge at payment, "
                     "order + order.created in one commit (3 services, 3 synchronous commits)"))

        # Store transactions: a guest's read-modify-write against the same done natively.
        count = 200 if args.quick else 2000
        started = time.perf_counter()
        for _ in range(count):
            http_call(host.gateway, "POST", "/kv/increment?key=n")
        guest_rate = count / (time.perf_counter() - started)
        path = os.path.join(tempfile.mkdtemp(prefix="shoal-bench-sqlite-"), "native.sqlite3")
        native = sqlite3.connect(path, isolation_level=None)
        native.execute("PRAGMA journal_mode = WAL")
        native.execute("PRAGMA synchronous = FULL")
        native.execute("CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB, version INTEGER) WITHOUT ROWID")
        started = time.perf_counter()
        for version in range(count):
            native.execute("BEGIN IMMEDIATE")
            row = native.execute("SELECT value FROM kv WHERE key = ?", (b"n",)).fetchone()
            value = int(row[0]) + 1 if row else 1
            native.execute("INSERT INTO kv VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                           "value = excluded.value, version = excluded.version",
                           (b"n", str(value).encode(), version))
            native.execute("COMMIT")
        native_rate = count / (time.perf_counter() - started)
        native.close()
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        rows.append(("shop", "store transactions from a guest", f"{guest_rate:,.0f} tx/s",
                     f"{count} sequential read-modify-write transactions over HTTP (counter /increment)"))
        rows.append(("shop", "the same transactions natively", f"{native_rate:,.0f} tx/s",
                     "Python sqlite3, WAL, synchronous=FULL, same machine (the ceiling)"))
        rows.append(("shop", "guest / native", f"{guest_rate / native_rate:.2f}×", "same run"))
        args.figures["store_ratio"] = guest_rate / native_rate

        # Events delivered end to end.
        events = 200 if args.quick else 2000
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: http_call(host.gateway, "POST", "/kv/publish?topic=bench.event", b"x"),
                          range(events)))
        while True:
            status, total = http_call(host.gateway, "GET", "/sub/handled-total")
            if status == 200 and int(total or b"0") >= events:
                break
            if time.perf_counter() - started > 300:
                raise RuntimeError("events were not all delivered")
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        conn = http.client.HTTPConnection(host.admin, timeout=30)
        conn.request("GET", "/metrics")
        metrics_text = conn.getresponse().read().decode()
        conn.close()
        lag = {q: histogram_quantile(metrics_text, "shoal_outbox_lag_seconds", q) for q in (0.5, 0.99)}
        rows.append(("shop", "events delivered end to end", f"{events / elapsed:,.0f} events/s",
                     f"{events} publishes from 8 clients until the subscriber committed all of them"))
        fmt = lambda v: "n/a" if v is None else f"≤ {v * 1000:.1f} ms"
        rows.append(("shop", "outbox lag p50 / p99", f"{fmt(lag[0.5])} / {fmt(lag[0.99])}",
                     "commit to bus, from the shoal_outbox_lag_seconds histogram (bucket bounds)"))
    finally:
        host.stop()


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return cpu, os.cpu_count(), rustc, rev


def fresh_postgres_database():
    """A new database on the run's PostgreSQL (scripts/servers.sh), as a --store URL."""
    server = os.environ.get("SHOAL_TEST_POSTGRES_URL")
    if not server:
        raise RuntimeError("SHOAL_TEST_POSTGRES_URL is not set: run through scripts/bench.sh "
                           "(it starts PostgreSQL)")
    psql = os.path.join(os.environ.get("SHOAL_TEST_POSTGRES_BIN", "/usr/bin"), "psql")
    name = f"shoal_bench_{os.getpid()}_{int(time.time() * 1000)}"
    subprocess.run([psql, server, "-qc", f"CREATE DATABASE {name}"], check=True)
    return server.rsplit("/", 1)[0] + "/" + name


def store_backends(args, rows):
    """Store backends: commits/s and shop orders/s on PostgreSQL against the embedded SQLite, side by side."""
    import concurrent.futures
    counter = open(os.path.join(args.guests, "counter.wasm"), "rb").read()
    count = 200 if args.quick else 2000
    figures = {}
    for label, extra in (("SQLite (embedded)", []), ("PostgreSQL", None)):
        if extra is None:
            extra = ["--store", fresh_postgres_database()]
        host = Host(args.shoal, ["--max-instances", "512", *extra])
        try:
            host.deploy("kv", counter, "[limits]\nmax_concurrency = 64\nqueue = 1024\n")
            started = time.perf_counter()
            for _ in range(count):
                http_call(host.gateway, "POST", "/kv/increment?key=n")
            sequential = count / (time.perf_counter() - started)

            def client(n):
                done = 0
                for _ in range(max(1, count // 64)):
                    status, _ = http_call(host.gateway, "POST", f"/kv/increment?key=k{n}")
                    done += status == 200
                return done
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(64) as pool:
                committed = sum(pool.map(client, range(64)))
            concurrent_rate = committed / (time.perf_counter() - started)

            deploy_shop(args, host)
            orders = orders_per_second(args, host)
        finally:
            host.stop()
        figures[label] = (sequential, concurrent_rate, orders)
        rows.append(("store backends", f"{label}: sequential commits", f"{sequential:,.0f} tx/s",
                     f"{count} read-modify-write transactions one after another (counter /increment over HTTP)"))
        rows.append(("store backends", f"{label}: 64 clients at once", f"{concurrent_rate:,.0f} tx/s",
                     "64 clients, each incrementing its own key (no conflicts): the cost of the pool"))
        rows.append(("store backends", f"{label}: shop orders", f"{orders:,.0f} orders/s",
                     f"16 clients for {args.seconds}s; 3 synchronous commits per order"))
    sqlite, postgres = figures["SQLite (embedded)"], figures["PostgreSQL"]
    rows.append(("store backends", "PostgreSQL ÷ SQLite",
                 f"{postgres[0] / sqlite[0]:.2f}× / {postgres[1] / sqlite[1]:.2f}× / {postgres[2] / sqlite[2]:.2f}×",
                 "sequential commits / 64 clients / shop orders, same run, same machine (PostgreSQL 15 on "
                 "loopback, fsync on, started by scripts/servers.sh)"))


EVENT_PUBLISHER = '[events]\npublishes = ["count.changed"]\nsubscribers = ["sub"]\n'
EVENT_SUBSCRIBER = ('[[subscriptions]]\ntopic = "count.changed"\nroute = "/events/handle"\n'
                    'max_attempts = 5\n')


def event_latency(args, rows):
    """Event latency: publish commit → subscriber's handler, on NATS JetStream against the embedded bus."""
    counter = open(os.path.join(args.guests, "counter.wasm"), "rb").read()
    count = 20 if args.quick else 300
    nats = os.environ.get("SHOAL_TEST_NATS_URL")
    if not nats:
        raise RuntimeError("SHOAL_TEST_NATS_URL is not set: run through scripts/bench.sh (it starts NATS)")
    configs = (
        ("embedded (SQLite store and bus)", lambda: []),
        ("PostgreSQL store, NATS JetStream bus", lambda: [
            "--store", fresh_postgres_database(), "--bus", nats,
            "--bus-namespace", f"bench{os.getpid()}{int(time.time())}"]),
    )
    figures = {}
    for label, extra in configs:
        host = Host(args.shoal, extra())
        try:
            host.deploy("pub", counter, EVENT_PUBLISHER)
            host.deploy("sub", counter, EVENT_SUBSCRIBER)
            published = []
            for _ in range(count):
                status, body = http_call(host.gateway, "POST", "/pub/publish?topic=count.changed", b"x")
                committed_ms = time.time() * 1000
                if status != 200:
                    raise RuntimeError(f"publish failed: {status} {body[:200]}")
                published.append((body.decode().strip(), committed_ms))
                time.sleep(0.01)  # one event at a time: latency, not throughput
            deadline = time.time() + 60
            latencies = []
            for event_id, committed_ms in published:
                while True:
                    status, body = http_call(host.gateway, "GET", f"/sub/get?key=handled-at%2F{event_id}")
                    if status == 200:
                        latencies.append(max(0.0, int(body.decode().strip()) - committed_ms))
                        break
                    if time.time() > deadline:
                        raise RuntimeError(f"event {event_id} was not handled within 60 s")
                    time.sleep(0.05)
        finally:
            host.stop()
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        figures[label] = (p50, p99)
        rows.append(("events", f"publish → handler, {label}", f"p50 {p50:.0f} ms, p99 {p99:.0f} ms",
                     f"{count} events one at a time, 10 ms apart: the subscriber's clock when its handler "
                     "committed minus the client's when the publish was acknowledged (same machine; ms)"))
    embedded, nats_figures = figures[configs[0][0]], figures[configs[1][0]]
    rows.append(("events", "NATS ÷ embedded (p50 / p99)",
                 f"{nats_figures[0] / max(embedded[0], 1):.2f}× / {nats_figures[1] / max(embedded[1], 1):.2f}×",
                 "same run, same machine (NATS 2.9 with JetStream on loopback, file storage, started by "
                 "scripts/servers.sh; PostgreSQL 15, fsync on)"))


def start_cluster(args, count, extra=()):
    """`count` hosts of a new cluster on the run's etcd (scripts/servers.sh), all up."""
    etcd = os.environ.get("SHOAL_TEST_ETCD_URL")
    if not etcd:
        raise RuntimeError("SHOAL_TEST_ETCD_URL is not set: run through scripts/bench.sh (it starts etcd)")
    root = tempfile.mkdtemp(prefix="shoal-bench-cluster-")
    token = os.path.join(root, "cluster-token")
    with open(token, "w") as out:
        out.write(os.urandom(32).hex())
    prefix = f"/bench-{os.getpid()}-{int(time.time() * 1000)}"
    hosts = []
    for n in range(1, count + 1):
        directory = os.path.join(root, f"h{n}")
        os.makedirs(directory)
        hosts.append(Host(args.shoal, ["--etcd", etcd, "--cluster-token-file", token, "--cluster-prefix", prefix,
                                       "--host-id", f"h{n}", "--lease-ttl-s", "3", *extra], directory=directory))
    wait_until(60, "every host up", lambda: sum(
        h["state"] == "up" for h in json.loads(hosts[0].admin_call("GET", "/v1/cluster"))["hosts"]) == count)
    return hosts, root


def wait_until(seconds, what, condition, pause=0.005):
    deadline = time.perf_counter() + seconds
    while not condition():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(pause)


def placed_on(host, name):
    """The host ids a service is placed on, as `host` sees it."""
    try:
        service = json.loads(host.admin_call("GET", f"/v1/services/{name}"))
    except RuntimeError:
        return []
    return [p["host"] for p in service.get("placements", [])]


def get_latencies(address, path, count):
    """Sequential GETs on one keep-alive connection: each round trip in µs."""
    conn = http.client.HTTPConnection(address, timeout=30)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status}")
        times.append((time.perf_counter() - started) * 1e6)
    conn.close()
    return times


def orders_per_second_through(args, gateways):
    """Orders placed per second by 16 clients spread over `gateways` for `args.seconds`."""
    import concurrent.futures
    body = b'{"sku": "widget", "quantity": 1}'
    deadline = time.time() + args.seconds

    def buyer(n):
        placed = 0
        gateway = gateways[n % len(gateways)]
        while time.time() < deadline:
            status, _ = http_call(gateway, "POST", "/orders/", body)
            placed += status == 201
        return placed
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        placed = sum(pool.map(buyer, range(16)))
    return placed / (time.perf_counter() - started)


def cluster(args, rows):
    """Cluster: cross-host calls, failover, deploy propagation, the shop on three hosts against one."""
    hello = open(os.path.join(args.guests, "hello.wasm"), "rb").read()
    hosts, root = start_cluster(args, 3)
    try:
        by_id = {f"h{n + 1}": host for n, host in enumerate(hosts)}
        hosts[0].deploy("hello", hello, 'version = "1"\n')
        wait_until(60, "hello placed", lambda: len(placed_on(hosts[0], "hello")) == 1)
        runner = by_id[placed_on(hosts[0], "hello")[0]]
        other = next(host for host in hosts if host is not runner)
        wait_until(60, "hello served through another host", lambda: http_call(other.gateway, "GET", "/hello/")[0] == 200)
        count = 50 if args.quick else 2000
        get_latencies(runner.gateway, "/hello/", args.warmup)
        get_latencies(other.gateway, "/hello/", args.warmup)
        here = get_latencies(runner.gateway, "/hello/", count)
        hop = get_latencies(other.gateway, "/hello/", count)
        p = lambda values, q: percentile(values, q)
        rows.append(("cluster", "request on the host that runs the service", f"p50 {p(here, 0.5):.0f} µs, p99 {p(here, 0.99):.0f} µs",
                     f"{count} sequential GETs on one keep-alive connection to that host's gateway (served in process)"))
        rows.append(("cluster", "request through another host (one hop)", f"p50 {p(hop, 0.5):.0f} µs, p99 {p(hop, 0.99):.0f} µs",
                     f"the same {count} GETs through a gateway that forwards to the host that runs it"))
        rows.append(("cluster", "added by the hop (p50)", f"{p(hop, 0.5) - p(here, 0.5):.0f} µs",
                     "same run; three hosts on one machine, loopback"))

        # Deploy propagation: 2xx through one host → the first 200 of the new version through another.
        manifest = 'version = "2"\n[config]\ngreeting = "Two"\n'
        watcher = next(host for host in hosts if host is not hosts[0])
        hosts[0].deploy("hello", hello, manifest)
        answered = time.perf_counter()
        wait_until(60, "the new version through another host",
                   lambda: http_call(watcher.gateway, "GET", "/hello/")[1].startswith(b"Two"), pause=0.001)
        propagation = (time.perf_counter() - answered) * 1000
        rows.append(("cluster", "deploy propagation", f"{propagation:.0f} ms",
                     "the deploy's 2xx through one host (it answers once the placed host serves it) → the first "
                     "200 of the new version through another host's gateway"))

        # Failover: kill -9 the host that runs it; time until discovery drops it and a replacement serves.
        runner = by_id[placed_on(hosts[0], "hello")[0]]
        survivor = next(host for host in hosts if host is not runner)
        runner_id = placed_on(survivor, "hello")[0]
        killed = time.perf_counter()
        runner.proc.kill()
        wait_until(60, "placements updated", lambda: runner_id not in placed_on(survivor, "hello"), pause=0.01)
        updated = time.perf_counter() - killed
        wait_until(60, "a replacement serving",
                   lambda: http_call(survivor.gateway, "GET", "/hello/")[0] == 200
                   and runner_id not in placed_on(survivor, "hello"), pause=0.01)
        serving = time.perf_counter() - killed
        rows.append(("cluster", "failover: kill -9 → placements updated", f"{updated:.1f} s",
                     "lease TTL 3 s (--lease-ttl-s 3); the leader places the replica elsewhere when the host's lease expires"))
        rows.append(("cluster", "failover: kill -9 → replacement serving", f"{serving:.1f} s",
                     "the replacement fetched the component from a holder and answers 200 through a survivor"))
        args.figures["failover"] = serving
    finally:
        for host in hosts:
            host.stop()
        shutil.rmtree(root, ignore_errors=True)

    # The shop on three hosts against one, both on PostgreSQL and NATS.
    nats = os.environ.get("SHOAL_TEST_NATS_URL")
    if not nats:
        raise RuntimeError("SHOAL_TEST_NATS_URL is not set: run through scripts/bench.sh (it starts NATS)")
    figures = {}
    for label, count in (("one host", 1), ("three hosts", 3)):
        extra = ["--max-instances", "512", "--store", fresh_postgres_database(), "--bus", nats,
                 "--bus-namespace", f"bench{os.getpid()}{int(time.time() * 1000)}"]
        hosts, root = start_cluster(args, count, extra)
        try:
            deploy_shop(args, hosts[0])
            for name in ("inventory", "payment", "orders", "shipping"):
                wait_until(60, f"{name} placed", lambda: len(placed_on(hosts[0], name)) == 1)
            figures[label] = orders_per_second_through(args, [host.gateway for host in hosts])
        finally:
            for host in hosts:
                host.stop()
            shutil.rmtree(root, ignore_errors=True)
        rows.append(("cluster", f"shop orders, {label}", f"{figures[label]:,.0f} orders/s",
                     f"16 clients spread over every gateway for {args.seconds}s; PostgreSQL store, NATS bus; "
                     "each service placed on one host"))
    rows.append(("cluster", "shop, three hosts ÷ one", f"{figures['three hosts'] / figures['one host']:.2f}×",
                 "same run, all hosts on this one machine and sharing its 2 cores (and one PostgreSQL, one NATS): "
                 "what spreading the services does here, not what more machines would give"))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shoal", required=True)
    parser.add_argument("--guests", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: exercise every step only")
    parser.add_argument("--large", help="a large component (e.g. Python) for the deploy benchmark")
    parser.add_argument("--only", help="run only these sections (comma-separated function names, e.g. deploy_latency)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of each side-by-side comparison")
    args = parser.parse_args()
    args.calls = 20 if args.quick else 2000
    args.warmup = 5 if args.quick else 200
    args.instantiations = 200 if args.quick else 20000
    args.seconds = 1 if args.quick else 10
    args.density = [5, 10] if args.quick else [100, 1000, 10000]
    args.distinct = 3 if args.quick else 100
    args.restore_services = 10 if args.quick else 1000

    rows = []
    args.figures = {}
    args.appendix = []
    sections = (gateway_throughput, wasip3_concurrency, latency_at_half_load, core_scaling, profile, instantiation, deploy_latency, fault_storm, telemetry_cost, recording_cost, a_to_b, grpc, density, restore, shop, store_backends, event_latency, cluster)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {section.__name__ for section in sections}
        if unknown:
            parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
        sections = [section for section in sections if section.__name__ in wanted]
    for section in sections:
        print(f"== {section.__doc__.splitlines()[0]}", flush=True)
        section(args, rows)

    cpu, cores, rustc, rev = machine()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        f"- Date: {now}" + (" — **quick mode: figures are meaningless**" if args.quick else ""),
        f"- Machine: {cores} cores, {cpu}, {platform.system()} {platform.release()}",
        f"- Versions: shoal {rev}, {rustc}, wasmtime 48.0.8",
        "- Command: `scripts/bench.sh`" + (" --quick" if args.quick else ""),
        "- Peers: `wasmtime serve " + " ".join(WASMTIME_SERVE_BEST) + " --addr ADDR COMPONENT` (wasmtime-cli "
        "48.0.8; tokio's default of one worker thread per core), and the same with `--max-instance-reuse-count 128` "
        "for the reuse rows; Shoal with its defaults (pooling allocator, one gateway serving thread per core) and, for reuse, "
        "`limits.instance_reuse = 128`; native hyper is `shoal bench-native-hello`. The same wasi:http component on "
        "every server: `plain_http.wasm` (several body chunks) and `wasi_hello.wasm` (one write). The WASIp3 rows run "
        "`p3_hello.wasm` on both, with `" + " ".join(P3_WASMTIME) + "` for wasmtime serve and "
        "`instance_reuse = 128`, `instance_concurrency = 16` for Shoal. wrk and hey run "
        "on the same 2 cores as the server.",
        f"- Every figure is the median of {args.rounds} rounds; alternatives are measured side by side in one run.",
        "",
        "| section | measurement | result | how |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += ["", "## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    figures = args.figures

    def target(name, goal, key, fmt, ok):
        if key in figures:
            value = figures[key]
            lines.append(f"| {name} | {goal} | {fmt.format(value)} | {'yes' if ok(value) else '**no**'} |")
        else:
            lines.append(f"| {name} | {goal} | not measured | - |")

    for label, file in GATEWAY_COMPONENTS:
        target(f"gateway, fresh instance per request ({file})", "≥ 2.0× wasmtime serve (pooling)", f"fresh_{label}", "{:.2f}×", lambda v: v >= 2.0)
        target(f"gateway, instance reuse 128 ({file})", "≥ 1.2× wasmtime serve (pooling) --max-instance-reuse-count 128", f"reuse_{label}", "{:.2f}×", lambda v: v >= 1.2)
    target("WASIp3 component, concurrent reuse on both (p3_hello.wasm)", "≥ 1.0× wasmtime serve (pooling) " + " ".join(P3_WASMTIME), "p3", "{:.2f}×", lambda v: v >= 1.0)
    target("instantiation (pooling)", "≤ 6 µs", "instantiation", "{:.1f} µs", lambda v: v <= 6)
    target("gateway ÷ in-process floor (one thread)", "≥ 0.8×", "gateway_overhead", "{:.2f}×", lambda v: v >= 0.8)
    target("p99 at half load, shoal ÷ wasmtime serve", "≤ 1.0×", "p99", "{:.2f}×", lambda v: v <= 1.0)
    target("p99 at half load, both reusing 128", "≤ 1.0×", "p99_reuse", "{:.2f}×", lambda v: v <= 1.0)
    target("in-process A→B added latency (means, same calls)", "≤ 50 µs", "added", "{:.0f} µs", lambda v: v <= 50)
    target("recording failed requests, when none fail ÷ off", "≥ 0.95×", "recording_failed", "{:.2f}×", lambda v: v >= 0.95)
    target("recording every request ÷ off", "reported", "recording_all", "{:.2f}×", lambda v: True)
    target("recording failed requests of a store reader, when none fail ÷ off", "≥ 0.95×", "recording_failed_store", "{:.2f}×", lambda v: v >= 0.95)
    target("recording every request of a store reader ÷ off", "reported", "recording_all_store", "{:.2f}×", lambda v: True)
    target("in-process A→B gRPC call added latency (means)", "reported", "grpc_added", "{:.0f} µs", lambda v: True)
    target("gRPC unary over one connection ÷ HTTP/1.1 over 64", "reported", "grpc_vs_h1", "{:.2f}×", lambda v: True)
    target("gRPC unary, shoal ÷ tonic (native ceiling)", "reported", "grpc_vs_tonic", "{:.2f}×", lambda v: True)
    target("cached redeploy to first 200 (Rust)", "≤ 50 ms", "cached_deploy", "{:.1f} ms", lambda v: v <= 50)
    target("10,000 idle services", "≤ 1 GiB RSS", "density_10000", "{:.0f} MiB", lambda v: v <= 1024)
    target("cold deploy of a big component (Python, JS) to first 200", "≤ 1 s", "cold_deploy", "{:.0f} ms", lambda v: v <= 1000)
    target("baseline code ÷ optimised code, time per request", "reported", "baseline_slowdown", "{:.2f}×", lambda v: True)
    target("failover: kill -9 → replacement serving", "≤ lease TTL + 5 s (8 s)", "failover", "{:.1f} s", lambda v: v <= 8)
    lines += args.appendix
    # The record of levers tried (hand-kept, with the runs each figure came from).
    levers = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-levers.md")
    with open(levers) as record:
        lines += ["", record.read().rstrip("\n")]
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as out:
        out.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
