#!/usr/bin/env python3
"""Compare Shoal builds side by side: each binary serves the same component on a host
of its own, and rounds of `wrk -t2 -c64` alternate between them.

Usage: scripts/ab.py KIND GUESTS_DIR SECONDS ROUNDS SHOAL [SHOAL ...]
KIND: p3 (p3_hello, 16 at once, 128 per instance), reuse (wasi_hello, reuse 128),
plain-reuse (plain_http, reuse 128) or fresh (wasi_hello, a fresh instance each).
Prints each binary's median requests/s and every round's figure.
"""
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

REUSE = bench.GATEWAY_MANIFEST + "instance_reuse = 128\n"
KINDS = {
    "p3": ("p3_hello", bench.P3_MANIFEST),
    "reuse": ("wasi_hello", REUSE),
    "plain-reuse": ("plain_http", REUSE),
    "fresh": ("wasi_hello", bench.GATEWAY_MANIFEST),
}


def main():
    if len(sys.argv) < 6 or sys.argv[1] not in KINDS:
        sys.exit(__doc__)
    kind, guests, seconds, rounds, binaries = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
    component, manifest = KINDS[kind]
    wasm = open(os.path.join(guests, component + ".wasm"), "rb").read()
    hosts = []
    try:
        for binary in binaries:
            host = bench.Host(binary)
            hosts.append(host)
            host.deploy("svc", wasm, manifest)
            bench.wrk(f"http://{host.gateway}/svc/", 64, 2, threads=2)  # warm-up
        rates = {binary: [] for binary in binaries}
        for _ in range(rounds):
            for host, binary in zip(hosts, binaries):  # alternate in every round
                rate, _, _, _ = bench.wrk(f"http://{host.gateway}/svc/", 64, seconds, threads=2)
                rates[binary].append(rate)
        for binary in binaries:
            rounds_text = ", ".join(f"{rate:,.0f}" for rate in rates[binary])
            print(f"{binary}: median {statistics.median(rates[binary]):,.0f} req/s ({rounds_text})")
    finally:
        for host in hosts:
            host.stop()


if __name__ == "__main__":
    main()
