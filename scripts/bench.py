#!/usr/bin/env python3
"""Shoal benchmarks: run side by side on this machine, report medians of rounds.

Each section starts what it needs, measures, and adds rows to one Markdown table
written to --out. Standard library only.
"""

import argparse
import datetime
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
import time

TOKEN = "bench-token"


class Host:
    """A `shoal serve` process on free ports with its own data directory."""

    def __init__(self, shoal, extra=()):
        self.dir = tempfile.mkdtemp(prefix="shoal-bench-")
        env = dict(os.environ, SHOAL_ADMIN_TOKEN=TOKEN, SHOAL_LOG="warn")
        self.proc = subprocess.Popen(
            [shoal, "serve", "--data-dir", os.path.join(self.dir, "data"),
             "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", *extra],
            stdout=subprocess.PIPE, stderr=open(os.path.join(self.dir, "host.log"), "wb"),
            env=env, text=True)
        self.gateway = self.admin = None
        deadline = time.time() + 120
        while self.gateway is None or self.admin is None:
            line = self.proc.stdout.readline()
            if not line or time.time() > deadline:
                raise RuntimeError("host did not start: " + open(os.path.join(self.dir, "host.log")).read())
            if line.startswith("gateway listening on http://"):
                self.gateway = line.strip().split("http://")[1]
            elif line.startswith("admin API listening on http://"):
                self.admin = line.strip().split("http://")[1]

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
        # `bloop` reaches b through this host's own gateway: same target, real socket.
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

        paths = {"in-process": "service=b&path=/", "loopback socket": "service=bloop&path=/b/"}
        for query in paths.values():
            measure(query, args.warmup)
        results = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, query in paths.items():  # alternate A/B in every round
                samples = measure(query, args.calls)
                results[name].append((percentile(samples, 0.5), percentile(samples, 0.99)))
        medians = {}
        for name, per_round in results.items():
            p50 = statistics.median(r[0] for r in per_round)
            p99 = statistics.median(r[1] for r in per_round)
            medians[name] = p50
            rows.append(("service-to-service", f"A→B call, {name}", f"p50 {p50:.0f} µs, p99 {p99:.0f} µs",
                         f"{args.rounds}×{args.calls} sequential calls, timed inside A around the host call"))
        rows.append(("service-to-service", "loopback / in-process (p50)",
                     f"{medians['loopback socket'] / max(medians['in-process'], 1):.2f}×", "same target, same run"))
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


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shoal", required=True)
    parser.add_argument("--guests", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: exercise every step only")
    args = parser.parse_args()
    args.rounds = 3
    args.calls = 20 if args.quick else 2000
    args.warmup = 5 if args.quick else 200

    rows = []
    for section in (a_to_b,):
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
        "- Every figure is the median of 3 rounds; alternatives are measured side by side in one run.",
        "",
        "| section | measurement | result | how |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as out:
        out.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
