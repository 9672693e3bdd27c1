#!/usr/bin/env python3
"""Writes link/hot-functions.txt: the functions of the droid binary that run.

The release build lays these out first in .text (build.rs hands the list
to the linker), so the code a process runs sits on few pages. The kernel
maps a file's pages 64 KiB at a time around each one touched, and the hot
code was spread over the whole 6.7 MB of .text: each process had 3-3.6 MB
of it resident. Ordered, the server's RSS falls by about 2 MiB.

How: a release build is run under valgrind's callgrind, as a server and as
a client with an app behind it, and driven through the paths users take
(small and 1 MiB answers, bodies, new connections, unknown names, mail).
Every function callgrind saw run is listed: the server's alone, then those
both ran, then the client's alone, so each process's code is one stretch.
What callgrind cannot see stays where it was: code picked by CPU features
valgrind lacks (SHA extensions), and paths taken only at full speed (lock
contention): about eight 64 KiB stretches of the server's, measured. A
second pass that ran the ordered build at full speed under `perf record
-e page-faults` and added what faulted cut them to three, but peak RSS in
the benchmarks did not move, so it was not kept.

Rerun after changing code or dependencies, or the toolchain: names carry
crate hashes, and fat LTO numbers its local functions (`write_str.3860`)
in an order any change can shift. Adding one dependency left 429 of 1,288
names unmatched, and the server's peak RSS 0.5-0.9 MiB higher. Names no
longer found are skipped, so only that gain is lost. `python3
link/profile.py` from the repository root, about 15 s; needs valgrind.
"""

import http.client
import http.server
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "droid")
OUTPUT = os.path.join(ROOT, "link", "hot-functions.txt")
DOMAIN = "hot.test"
BIG = b"x" * (1024 * 1024)


class App(http.server.BaseHTTPRequestHandler):
    """The local app: a small answer, a 1 MiB answer, and echoed bodies."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.answer(BIG if self.path.startswith("/big") else b"hello from the app\n")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.answer(self.rfile.read(length))

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class AppServer(http.server.ThreadingHTTPServer):
    # socketserver's backlog of 5 can refuse a burst of connections.
    request_queue_size = 128
    daemon_threads = True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, ready, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    sys.exit(f"profile: {what} was not ready after {seconds} s")


def get(port, host, path, method="GET", body=None, close=False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Host": host}
        if close:
            headers["Connection"] = "close"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def kept_alive(port, host, path, count):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for _ in range(count):
            conn.request("GET", path, headers={"Host": host})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                return response.status
        return 200
    finally:
        conn.close()


def abandon(port, host, path, read):
    """A visitor that leaves mid-way: after `read` bytes of the answer, or
    (`read` = 0) before its request is whole."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        if read:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            s.recv(read)
        else:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode())
    return 200


def drive(http_port, smtp_port):
    host = f"hot.{DOMAIN}"
    with ThreadPoolExecutor(max_workers=16) as pool:
        jobs = [pool.submit(kept_alive, http_port, host, "/small", 200) for _ in range(8)]
        jobs += [pool.submit(kept_alive, http_port, host, "/big", 8) for _ in range(8)]
        jobs += [pool.submit(get, http_port, host, "/small", close=True) for _ in range(32)]
        jobs += [pool.submit(get, http_port, host, "/echo", "POST", b"b" * 70_000) for _ in range(32)]
        jobs += [pool.submit(abandon, http_port, host, "/big", 1000) for _ in range(8)]
        jobs += [pool.submit(abandon, http_port, host, "/small", 0) for _ in range(8)]
        failed = [j.result() for j in jobs if j.result() != 200]
        if failed:
            sys.exit(f"profile: {len(failed)} visitors failed: {failed}")
    get(http_port, f"nobody.{DOMAIN}", "/")
    get(http_port, "elsewhere.example", "/")
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=60) as smtp:
        message = (
            f"From: a@example.com\r\nTo: b@{host}\r\nSubject: hot\r\n"
            "Content-Type: text/plain\r\n\r\nhello\r\n"
        )
        smtp.sendmail("a@example.com", [f"b@{host}"], message)


def executed(callgrind_out):
    """Names of the functions a callgrind profile saw run."""
    names, seen = {}, set()
    with open(callgrind_out, errors="replace") as f:
        for line in f:
            m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
            if not m:
                continue
            kind, key, name = m.groups()
            if name:
                # callgrind marks a recursive call's frame with 'N.
                names[key] = re.sub(r"'\d+$", "", name)
            if kind == "fn":
                seen.add(names.get(key))
    return seen


def text_symbols():
    """The binary's functions in address order."""
    out = subprocess.run(
        ["nm", "--defined-only", "--numeric-sort", BINARY],
        check=True, capture_output=True, text=True,
    ).stdout
    return [p[2] for p in (l.split() for l in out.splitlines()) if len(p) == 3 and p[1] in "tT"]


def profile(work):
    """Runs a server and a client under callgrind through `drive`; returns
    the paths of their profiles."""
    app = AppServer(("127.0.0.1", 0), App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    http_port, control_port, smtp_port = free_port(), free_port(), free_port()
    callgrind = ["valgrind", "--tool=callgrind", "--demangle=no"]
    env = dict(os.environ, DROID_STATE_DIR=os.path.join(work, "state"))
    server_out, client_out = f"{work}/server.out", f"{work}/client.out"
    processes = []
    try:
        processes.append(subprocess.Popen(
            callgrind + [f"--callgrind-out-file={server_out}", BINARY, "server",
                         "--domain", DOMAIN, "--http", f"127.0.0.1:{http_port}",
                         "--control", f"127.0.0.1:{control_port}",
                         "--smtp", f"127.0.0.1:{smtp_port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        wait_for("the server", lambda: get(http_port, DOMAIN, "/") is not None)
        processes.insert(0, subprocess.Popen(
            callgrind + [f"--callgrind-out-file={client_out}", BINARY, "http",
                         str(app.server_address[1]), "--server", f"127.0.0.1:{control_port}",
                         "--name", "hot"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        wait_for("the tunnel", lambda: get(http_port, f"hot.{DOMAIN}", "/small") == 200)
        drive(http_port, smtp_port)
        # Client first, so the server sees it leave; each writes its
        # profile as it exits.
        for process in processes:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        app.shutdown()
    return server_out, client_out


def main():
    subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory(prefix="droid-profile-") as work:
        server_out, client_out = profile(work)
        server_ran, client_ran = executed(server_out), executed(client_out)
    symbols = text_symbols()
    order = (
        [s for s in symbols if s in server_ran and s not in client_ran]
        + [s for s in symbols if s in server_ran and s in client_ran]
        + [s for s in symbols if s in client_ran and s not in server_ran]
    )
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    with open(OUTPUT, "w") as f:
        f.write(
            "# The functions a droid server and client run, for the linker to lay out\n"
            f"# first (see build.rs). Made by link/profile.py with {rustc}.\n"
        )
        f.write("\n".join(order) + "\n")
    print(f"profile: {len(order)} of {len(symbols)} functions written to {OUTPUT}")


if __name__ == "__main__":
    main()
