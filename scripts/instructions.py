#!/usr/bin/env python3
"""Instructions the host spends per request, counted by callgrind (repeatable, unlike
requests per second on a busy machine): each binary serves the same component on a
host of its own under valgrind; after a warm-up, counting is switched on, a fixed
number of requests is sent one after another over one keep-alive connection, and
counting is dumped. The instructions of the thread that served them (the host's and
the guest's code) are divided by the requests.

Valgrind runs the host with on-demand instances (`--no-pooling`): it cannot reserve
the pooling allocator's address space. With reuse, a request instantiates nothing.

Usage: scripts/instructions.py KIND GUESTS_DIR REQUESTS SHOAL [SHOAL ...]
KIND as scripts/ab.py's (reuse, plain-reuse, fresh, p3).
"""
import glob
import http.client
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ab  # noqa: E402
import bench  # noqa: E402


def measure(binary, wasm, manifest, requests):
    out_dir = tempfile.mkdtemp(prefix="shoal-callgrind-")
    wrapper = os.path.join(out_dir, "under-valgrind.sh")
    with open(wrapper, "w") as script:
        script.write("#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes --smc-check=all-non-file "
                     f"--callgrind-out-file={out_dir}/cg.%p {binary} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    # On-demand instances: valgrind cannot reserve the pooling allocator's address space.
    host = bench.Host(wrapper, ["--no-pooling"], startup_seconds=600)
    try:
        host.deploy("svc", wasm, manifest)
        address, port = host.gateway.split(":")
        connection = http.client.HTTPConnection(address, int(port), timeout=60)

        def send(count):
            for _ in range(count):
                connection.request("GET", "/svc/")
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    sys.exit(f"{binary}: status {response.status}")

        send(200)  # warm-up: instances made, code paged in
        pid = host.proc.pid
        subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
        send(requests)
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
        time.sleep(1)
        # One connection is served by one serving thread: its instructions are the
        # requests' (the epoch tickers, the admin runtime and the other serving thread
        # are left out). Its profile stays in `out_dir` for callgrind_annotate.
        busiest, total = None, 0
        for path in glob.glob(os.path.join(out_dir, "cg.*")):
            for line in open(path, errors="replace"):
                if line.startswith("summary:") and int(line.split()[1]) > total:
                    busiest, total = path, int(line.split()[1])
        return total / requests, busiest
    finally:
        host.stop()


def main():
    if len(sys.argv) < 5 or sys.argv[1] not in ab.KINDS:
        sys.exit(__doc__)
    kind, guests, requests, binaries = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    component, manifest = ab.KINDS[kind]
    wasm = open(os.path.join(guests, component + ".wasm"), "rb").read()
    for binary in binaries:
        per_request, profile = measure(binary, wasm, manifest, requests)
        print(f"{binary}: {per_request:,.0f} instructions per request on its serving thread "
              f"({requests} requests, one connection, callgrind; profile {profile})", flush=True)


if __name__ == "__main__":
    main()
