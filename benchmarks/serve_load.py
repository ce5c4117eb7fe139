"""Load on ``xreg serve`` (issues 14, 25): latency and throughput with and without
micro-batching, against the code before a change (``--baseline TREE``) and with other
history runtimes (``--runtimes onnx``).

The script starts two ``xreg serve`` processes on free 127.0.0.1 ports with NAME
preloaded, one micro-batching and one with ``--no-batching``, waits until both are
ready, then for each client count N runs N concurrent clients for T seconds against
each in turn.  Each client sends whole-catalogue ``POST /v1/recommend`` requests
(top 10) for the histories of the domain's test users, one after another on a
keep-alive connection, and stops by itself at the deadline; N and T are bounded.  It prints p50/p95/p99 latency, requests per second
and errors, and compares with the fresh-process command-line path (``xreg recommend``,
model load included) that a service without a server would pay per request.  The
servers are stopped at the end, also on errors.

Each row also reads the server process's CPU time (``/proc/PID/stat``, Linux): CPU
milliseconds per request, and requests per CPU second.  On a shared machine a server
waits for a core, which the wall-clock columns count and CPU time does not; with one
torch thread per server (``OMP_NUM_THREADS=1``), requests per CPU second estimate what
the server would sustain on a core of its own.  Usage::

    XREG_HOME=... python benchmarks/serve_load.py tools-x --clients 1,4,16 --seconds 20
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Iterator

MAX_CLIENTS = 64
MAX_SECONDS = 120.0
XREG = [sys.executable, "-c", "from xcross_registry.cli import main; main()"]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"xreg serve exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"xreg serve was not ready after {timeout:.0f} s")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` and its threads (nan off Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_request(row: dict) -> float:
    return row["cpu"] / max(row["requests"], 1)


def run_clients(server: tuple[int, int], subject: str, histories: list[list[str]], clients: int,
                seconds: float) -> dict:
    """``clients`` threads, each sending requests until ``seconds`` have passed, against
    ``server`` (port, process id)."""
    port, pid = server
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, wrong = [], []
        start_gate.wait()
        deadline = time.monotonic() + seconds
        sent = number
        while time.monotonic() < deadline:
            body = json.dumps({"subject": subject, "history": histories[sent % len(histories)],
                               "top_k": 10})
            sent += clients
            began = time.perf_counter()
            try:
                connection.request("POST", "/v1/recommend", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
                if response.status != 200 or len(json.loads(payload)["items"]) != 10:
                    wrong.append(f"{response.status}: {payload[:200]!r}")
                    continue
            except (OSError, http.client.HTTPException, ValueError) as exc:
                wrong.append(repr(exc))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            mine.append(time.perf_counter() - began)
        connection.close()
        with lock:
            latencies.extend(mine)
            errors.extend(wrong)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    began, cpu = time.perf_counter(), cpu_seconds(pid)
    for thread in threads:
        thread.join()
    elapsed, cpu = time.perf_counter() - began, cpu_seconds(pid) - cpu
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "cpu": cpu,
            "first_error": errors[0] if errors else None, "seconds": elapsed,
            "rps": len(latencies) / elapsed, "p50": percentile(latencies, 0.50),
            "p95": percentile(latencies, 0.95), "p99": percentile(latencies, 0.99)}


@contextlib.contextmanager
def running_server(args, flags: list[str], tree: str | None = None) -> Iterator[tuple[int, int]]:
    """``xreg serve`` with NAME preloaded, on a free port, from this checkout or from the
    source tree ``tree`` (the code before a change), as (port, process id); stopped
    however the block ends."""
    port = free_port()
    command = [*XREG, "serve", "--port", str(port), "--preload", args.name,
               "--batch-wait-ms", str(args.batch_wait_ms), *flags]
    env = dict(os.environ)
    plugins = [os.path.abspath(args.plugins)] if args.plugins else []
    if tree is not None:
        root = os.path.abspath(tree)
        env["PYTHONPATH"] = os.pathsep.join([*plugins, root, os.path.join(root, "plugins")])
        if args.baseline_home:
            env["XREG_HOME"] = os.path.abspath(args.baseline_home)
    elif plugins:
        env["PYTHONPATH"] = os.pathsep.join([*plugins, *filter(None, [env.get("PYTHONPATH")])])
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=tree)
    try:
        wait_ready(port, process, args.ready_timeout)
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cli_seconds(name: str, history: list[str], repeats: int, plugins: str | None = None) -> float:
    env = dict(os.environ)
    if plugins:
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(plugins), *filter(None, [env.get("PYTHONPATH")])])
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run([*XREG, "recommend", name, "--history", "; ".join(history), "--top", "10",
                        "--json"], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="dual composition or adapter in the registry at $XREG_HOME")
    parser.add_argument("--clients", default="1,4,16", help=f"comma-separated client counts (each <= {MAX_CLIENTS})")
    parser.add_argument("--seconds", type=float, default=20.0, help=f"load per client count (<= {MAX_SECONDS:.0f})")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--users", type=int, default=200, help="test users whose histories are sent")
    parser.add_argument("--cli-repeats", type=int, default=3)
    parser.add_argument("--baseline", help="a source tree (e.g. `git archive COMMIT | tar -x -C TREE`) "
                        "whose batching server is compared with this checkout's")
    parser.add_argument("--baseline-home", help="the baseline server's XREG_HOME (default: $XREG_HOME): a "
                        "copy of the registry at the schema the old code reads, when this checkout's is newer")
    parser.add_argument("--plugins", help="a plugin folder that every server (and this process) searches "
                        "first: the same data plugin for both trees when it changed between them")
    parser.add_argument("--runtimes", default="", help="also serve with these runtimes of this "
                        "checkout (`xreg serve --runtime`), comma-separated, e.g. onnx")
    parser.add_argument("--ready-timeout", type=float, default=1800.0,
                        help="seconds to wait for the preload (the first run encodes the catalogue)")
    args = parser.parse_args()
    args.clients = [int(n) for n in args.clients.split(",")]
    if not all(1 <= n <= MAX_CLIENTS for n in args.clients) or not 0 < args.seconds <= MAX_SECONDS:
        raise SystemExit(f"clients must be 1..{MAX_CLIENTS} and seconds 0..{MAX_SECONDS:.0f}")

    if args.plugins:
        sys.path.insert(0, os.path.abspath(args.plugins))
    from xcross_registry.registry import Registry
    from xcross_registry.subjects import resolve_subject

    registry = Registry()
    data = registry.domain_data(resolve_subject(registry, args.name).domain)
    histories = [[data.items[i].title for i in user.history] for user in data.test if user.history]
    histories = histories[:args.users]

    # The servers run side by side (an idle one costs no CPU) and take turns at each
    # client count, so that load from elsewhere on the machine hits them all alike.
    servers: dict[str, tuple[list[str], str | None]] = {}
    if args.baseline:
        servers["baseline batched"] = ([], args.baseline)
    servers["batched"] = ([], None)
    servers["unbatched"] = (["--no-batching"], None)
    for runtime in filter(None, args.runtimes.split(",")):
        servers[f"batched {runtime}"] = (["--runtime", runtime], None)
    results: dict[str, list[dict]] = {mode: [] for mode in servers}
    with contextlib.ExitStack() as stack:
        started = {mode: stack.enter_context(running_server(args, flags, tree))
                   for mode, (flags, tree) in servers.items()}
        for mode, server in started.items():  # warm-up
            run_clients(server, args.name, histories, 2, min(3.0, args.seconds))
        for clients in args.clients:
            for mode, server in started.items():
                results[mode].append(run_clients(server, args.name, histories, clients, args.seconds))
    cli = cli_seconds(args.name, histories[0], args.cli_repeats, args.plugins)

    load = os.getloadavg()
    print(f"# {args.name}: {len(data.items)} items, whole-catalogue top 10, {len(histories)} test-user "
          f"histories, {args.seconds:g} s per row, {os.cpu_count()} CPUs, batch wait {args.batch_wait_ms:g} ms, "
          f"load average {load[0]:.2f} {load[1]:.2f} at the end")
    print(f"xreg recommend (fresh process, model load included): median {cli:.3f} s over "
          f"{args.cli_repeats} runs = {1 / cli:.3f} requests/s")
    print(f"{'mode':<10} {'clients':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'errors':>6} {'cpu ms/req':>10} {'req/cpu-s':>9} {'req/s vs CLI':>12} {'CLI s / p50':>11}")
    for mode, rows in results.items():
        for row in rows:
            per_request = cpu_per_request(row)
            print(f"{mode:<10} {row['clients']:>7} {row['requests']:>8} {row['rps']:>8.2f} "
                  f"{row['p50'] * 1e3:>8.1f} {row['p95'] * 1e3:>8.1f} {row['p99'] * 1e3:>8.1f} "
                  f"{row['errors']:>6} {per_request * 1e3:>10.1f} {1 / per_request:>9.2f} "
                  f"{row['rps'] * cli:>11.1f}x {cli / row['p50']:>10.1f}x")
            if row["first_error"]:
                print(f"  first error: {row['first_error']}")
    for batched, unbatched in zip(results["batched"], results["unbatched"]):
        print(f"micro-batching at {batched['clients']:>2} clients: {batched['rps'] / unbatched['rps']:.2f}x "
              f"the requests/s of unbatched")
    reference = "baseline batched" if args.baseline else "batched"
    for mode, rows in results.items():
        if mode == reference:
            continue
        for row, before in zip(rows, results[reference]):
            print(f"{mode} at {row['clients']:>2} clients against {reference}: {row['rps'] / before['rps']:.2f}x "
                  f"the requests/s, p50 {before['p50'] / row['p50']:.2f}x faster, "
                  f"{cpu_per_request(before) / cpu_per_request(row):.2f}x the requests per CPU second")


if __name__ == "__main__":
    main()
