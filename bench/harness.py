"""Shared machinery for the p2pfs benchmark suite (bench/run.py).

Process groups with a cleanup handler (every process the suite starts is
killed on exit, failure or Ctrl-C), daemon start-up with address parsing,
a small JSON-over-HTTP client, a server-sent-events watcher for download
completion, random test files, /proc memory readings and statistics.
Python 3 standard library only.
"""

import atexit
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target", "release", "p2pfs")
# Every daemon of a run gets this HTTP API token (the swarm's APIs listen on
# namespace addresses, where a token is required), and every request sends it.
# A token may start with "-", so it is always passed as `--http-token=TOKEN`.
HTTP_TOKEN = secrets.token_urlsafe(32)
TCPCOPY = os.path.join(REPO, "target", "release", "tcpcopy")

MiB = 1 << 20
GiB = 1 << 30


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- cleanup

class Cleanup:
    """Everything to undo at exit: process groups, then callbacks (LIFO)."""

    def __init__(self):
        self.procs = []
        self.callbacks = []
        self.lock = threading.Lock()
        atexit.register(self.run)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame):
        log(f"signal {signum}: cleaning up")
        self.run()
        os._exit(128 + signum)

    def add_proc(self, p):
        with self.lock:
            self.procs.append(p)

    def add(self, fn):
        with self.lock:
            self.callbacks.append(fn)

    def kill_procs(self, procs=None):
        with self.lock:
            targets = list(self.procs if procs is None else procs)
        alive = [p for p in targets if p.poll() is None]
        for p in alive:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 5
        for p in alive:
            try:
                p.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                p.wait()
        with self.lock:
            self.procs = [p for p in self.procs if p not in targets]

    def run(self):
        self.kill_procs()
        with self.lock:
            cbs, self.callbacks = self.callbacks[::-1], []
        for fn in cbs:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                log(f"cleanup step failed: {e}")


CLEANUP = Cleanup()


def spawn(cmd, *, stdout=subprocess.PIPE, stderr=None, env=None, cwd=None):
    """Starts `cmd` in its own process group, registered for cleanup."""
    p = subprocess.Popen(
        cmd, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
        start_new_session=True, text=True,
    )
    CLEANUP.add_proc(p)
    return p


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, **kw)


def free_port():
    return free_ports(1)[0]


def free_ports(n):
    """`n` distinct ports free on loopback now. (All are held until all are
    chosen: one at a time, the kernel may hand out the same port twice, and
    a crowd of 200 aria2c once had two of them fail to bind.)"""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------- daemons

class Daemon:
    """A p2pfs tracker or peer process and the addresses it printed."""

    PATTERNS = {
        "tracker": re.compile(r"^tracker serving on (\S+)"),
        "api": re.compile(r"^web UI and API on (\S+)"),
        "peer": re.compile(r"^peer (\S+) listening on (\S+)"),
        "connected": re.compile(r"^connected to tracker (\S+?);.* at (\S+)"),
        "join": re.compile(r"^peers join with:\s+p2pfs peer --join (\S+)"),
    }

    def __init__(self, cmd, logpath, env=None):
        self.logpath = logpath
        self.logf = open(logpath, "w")
        self.proc = spawn(cmd, stderr=self.logf, env=env)
        self.pid = self.proc.pid
        self.info = {}
        self.lines = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self.cond:
                self.lines.append(line)
                for key, pat in self.PATTERNS.items():
                    m = pat.match(line)
                    if m:
                        self.info[key] = m.groups()
                self.cond.notify_all()
        with self.cond:
            self.info["eof"] = True
            self.cond.notify_all()

    def wait_for(self, keys, timeout=30):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(k in self.info for k in keys):
                left = deadline - time.monotonic()
                if left <= 0 or "eof" in self.info:
                    raise RuntimeError(
                        f"daemon did not print {keys} (got {self.lines}); log {self.logpath}")
                self.cond.wait(left)

    @property
    def api(self):
        return self.info["api"][0].rstrip("/")

    def stop(self):
        if self.proc.poll() is None:
            try:
                http_json(self.api, "POST", "/api/exit", {}, timeout=2)
                self.proc.wait(timeout=5)
            except Exception:  # noqa: BLE001 - fall back to signals
                pass
        CLEANUP.kill_procs([self.proc])
        self.logf.close()

    def mem(self):
        return proc_mem(self.pid)


def ns_prefix(netns):
    return ["ip", "netns", "exec", netns] if netns else []


def start_tracker(logdir, tag="tracker", listen="127.0.0.1:0", http="127.0.0.1:0",
                  netns=None, env=None, insecure=False):
    """A tracker with a fresh network secret in LOGDIR/TAG-data (or plain with
    `insecure`); `d.join` is its join token."""
    extra = ["--insecure"] if insecure else []
    d = Daemon(ns_prefix(netns) + [BIN, "tracker", "--listen", listen, "--no-shell",
                                   "--http", http, f"--http-token={HTTP_TOKEN}",
                                   "--data", os.path.join(logdir, f"{tag}-data")]
               + extra,
               os.path.join(logdir, f"{tag}.log"), env=env)
    d.wait_for(["tracker", "api"] + ([] if insecure else ["join"]))
    d.addr = d.info["tracker"][0]
    d.insecure = insecure
    d.join = None if insecure else d.info["join"][0]
    return d


def start_peer(logdir, tag, tracker, repo, listen="127.0.0.1:0", http="127.0.0.1:0",
               netns=None, env=None, wait=True):
    """A peer of `tracker` (a Daemon from start_tracker), in its mode."""
    os.makedirs(repo, exist_ok=True)
    join = ["--insecure"] if tracker.insecure else ["--join", tracker.join]
    d = Daemon(ns_prefix(netns) + [BIN, "peer", "--tracker", tracker.addr, "--listen", listen,
                                   "--repo", repo, "--no-shell", "--http", http,
                                   f"--http-token={HTTP_TOKEN}"] + join,
               os.path.join(logdir, f"{tag}.log"), env=env)
    if wait:
        peer_ready(d)
    return d


def peer_ready(d, timeout=60):
    d.wait_for(["peer", "api", "connected"], timeout=timeout)
    d.addr = d.info["connected"][1]


def stop_all(daemons):
    """Stops daemons in parallel (each POST /api/exit, then signals)."""
    ts = [threading.Thread(target=d.stop) for d in daemons]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


# ---------------------------------------------------------------- HTTP

def http_json(base, method, path, body=None, timeout=30, raw_errors=False):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {HTTP_TOKEN}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{method} {base}{path}: {e.code} {e.read().decode()}") from None
    except (urllib.error.URLError, OSError) as e:
        if raw_errors:
            raise
        # Which call failed, not only "Broken pipe".
        raise RuntimeError(f"{method} {base}{path}: {getattr(e, 'reason', e)!r}") from None


def publish(peer, path, name, timeout=600):
    return http_json(peer.api, "POST", "/api/publish", {"path": path, "name": name},
                     timeout=timeout)


def wait_listed(tracker, name, timeout=600, interval=0.005, sources=None):
    """Polls the tracker until `name` is listed (with at least `sources`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = http_json(tracker.api, "GET", "/api/files")["files"]
        for f in files:
            if f["name"] == name and (sources is None or f["sources"] >= sources):
                return time.monotonic(), f
        time.sleep(interval)
    raise RuntimeError(f"{name} not listed at the tracker within {timeout} s")


def api_host_port(api):
    """(host, port) of an API base address such as http://127.0.0.1:8080."""
    m = re.match(r"http://([^/:]+):(\d+)", api)
    return m.group(1), int(m.group(2))


class EndWatcher:
    """Follows a peer's /api/events stream and records when each download
    ends (monotonic time, and the download JSON of the `ended` event)."""

    def __init__(self, api, timeout=3600):
        host, port = api_host_port(api)
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.conn.request("GET", "/api/events", headers={
            "Accept": "text/event-stream", "Authorization": f"Bearer {HTTP_TOKEN}"})
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            raise RuntimeError(f"events: HTTP {self.resp.status}")
        self.ended = {}
        self.cond = threading.Condition()
        self.first = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        # Wait for the initial event so the stream is known to be live.
        if not self.first.wait(10):
            raise RuntimeError("no initial event from /api/events")

    def _read(self):
        event = None
        try:
            while True:
                line = self.resp.fp.readline()
                if not line:
                    break
                line = line.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    self.first.set()
                    if event == "ended":
                        t = time.monotonic()
                        d = json.loads(line[5:].strip())
                        with self.cond:
                            self.ended[d["id"]] = (t, d)
                            self.cond.notify_all()
                elif line == "":
                    event = None
        except Exception:  # noqa: BLE001 - the stream closes when the daemon exits
            pass
        self.first.set()
        with self.cond:
            self.ended.setdefault("closed", (time.monotonic(), None))
            self.cond.notify_all()

    def wait(self, dl_id, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while dl_id not in self.ended:
                left = deadline - time.monotonic()
                if "closed" in self.ended:
                    raise RuntimeError(f"event stream closed before download {dl_id} ended")
                if left <= 0:
                    raise RuntimeError(f"download {dl_id} did not end within {timeout} s")
                self.cond.wait(left)
            return self.ended[dl_id]

    def close(self):
        try:
            self.conn.sock.shutdown(2)
        except Exception:  # noqa: BLE001
            pass
        self.conn.close()


def start_fetch(peer, name, dest, attempts=3):
    """POST /api/fetch. A broken pipe means the peer closed the connection
    before the request was sent whole (a harness thread that stalls past
    the API's 10 s header timeout between connecting and sending meets
    one), so the peer cannot have acted on it: send it again, and say so."""
    for attempt in range(attempts):
        try:
            return http_json(peer.api, "POST", "/api/fetch", {"name": name, "dest": dest},
                             raw_errors=True)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if not isinstance(reason, BrokenPipeError) or attempt + 1 == attempts:
                raise RuntimeError(f"POST {peer.api}/api/fetch: {reason!r}") from None
            log(f"POST {peer.api}/api/fetch: broken pipe before the request was sent; "
                "sending it again")


def start_fetches_together(peers, name, dests):
    """POST /api/fetch on every peer at the same moment. Returns (download
    ids, monotonic start time); raises the first error.

    One thread with non-blocking sockets: it connects to every peer, then
    writes all the requests in one go, and only then reads the answers.
    (With a thread per request, released together, the downloads that
    started first could starve the late threads for more than the API's
    10 s header timeout between connecting and sending, so some fetches
    began seconds late and the total measured that.)"""
    import asyncio

    addrs = [api_host_port(p.api) for p in peers]

    def request(host, port, dest):
        body = json.dumps({"name": name, "dest": dest}).encode()
        head = (f"POST /api/fetch HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {HTTP_TOKEN}\r\n"
                "Content-Type: application/json\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        return head.encode() + body

    async def answer(peer, reader):
        raw = await asyncio.wait_for(reader.read(), 60)
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
        if status not in (200, 201, 202):
            raise RuntimeError(f"POST {peer.api}/api/fetch: {status} {body[:500]!r}")
        return json.loads(body)["id"]

    async def main():
        conns = await asyncio.gather(*(asyncio.open_connection(h, p) for h, p in addrs))
        reqs = [request(h, p, d) for (h, p), d in zip(addrs, dests)]
        t0 = time.monotonic()
        try:
            for (_, writer), req in zip(conns, reqs):
                writer.write(req)
            await asyncio.gather(*(w.drain() for _, w in conns))
            ids = await asyncio.gather(*(answer(p, r) for p, (r, _) in zip(peers, conns)))
        finally:
            for _, w in conns:
                w.close()
        return list(ids), t0

    return asyncio.run(main())


def timed_fetch(peer, name, dest, timeout=3600):
    """POST /api/fetch, then wait for its `ended` event. Returns
    (wall seconds from issuing the fetch to the `ended` event, download)."""
    w = EndWatcher(peer.api)
    try:
        t0 = time.monotonic()
        d = start_fetch(peer, name, dest)
        t1, end = w.wait(d["id"], timeout)
    finally:
        w.close()
    if end["state"] != "done":
        raise RuntimeError(f"fetch of {name} ended {end['state']}: {end['error']}")
    return t1 - t0, end


# ---------------------------------------------------------------- files, memory

def make_random_file(path, size):
    """Random bytes (os.urandom in 16 MiB blocks)."""
    block = 16 * MiB
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(block, left)
            f.write(os.urandom(n))
            left -= n


def settle_memory(directory, size):
    """Writes `size` bytes of zeros to a scratch file in `directory`, syncs
    and deletes it. On this VM the first use of guest memory that has not
    been touched yet costs the kernel several times more than reuse: the
    first 5 GiB fetch after the source file was made spent 12-15 s of system
    time against 2-4 s for the next, and a write-and-delete of 5 GiB before
    it removed the difference. Without this, whichever method runs first
    pays for it."""
    path = os.path.join(directory, "settle-scratch")
    zeros = bytes(16 * MiB)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(len(zeros), left)
            f.write(zeros[:n])
            left -= n
    sync()
    remove(path)
    sync()


def write_floor(directory, total, writers=2):
    """Seconds `writers` parallel `dd` take to write `total` bytes of zeros
    into new files in `directory` (then deleted): about the least time any
    program needs to put that much new data there on this machine.

    On this VM that time changes by a factor of three from hour to hour:
    the virtio balloon reports memory the guest frees back to the host (its
    REPORTING feature), and writing into memory the host has to back again
    costs more. 12.5 GiB took two `dd` 14.5 s (27.6 CPU-s) into memory left
    idle for 20 s and 5.0 s right after the same memory was freed; in a
    later hour 3.8-4.8 s."""
    block = 16 * MiB
    each = max(1, total // writers // block)
    paths = [os.path.join(directory, f"floor-{i}") for i in range(writers)]
    t0 = time.monotonic()
    procs = [subprocess.Popen(["dd", "if=/dev/zero", f"of={p}", f"bs={block}", f"count={each}",
                               "status=none"]) for p in paths]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"dd into {directory} failed")
    secs = time.monotonic() - t0
    for p in paths:
        remove(p)
    return secs


def warm(path):
    """Reads a file once so that it is in the page cache."""
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass


def sync():
    os.sync()


def drop_caches():
    sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def proc_mem(pid):
    """VmHWM and VmRSS of a process in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS"):
                out[k] = int(v.split()[0]) * 1024
    return out


def proc_cpu(pid):
    """CPU seconds (user + system, every thread) a running process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_bytes(path):
    return shutil.disk_usage(path).free


# ---------------------------------------------------------------- statistics

def summary(values):
    vs = [v for v in values if v is not None]
    if not vs:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": statistics.median(vs), "min": min(vs), "max": max(vs), "n": len(vs),
            "values": vs}


def fmt_s(s):
    """median (min–max) with 3 significant-ish digits."""
    if s["median"] is None:
        return "n/a"

    def f(x):
        if abs(x) >= 100:
            return f"{x:.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        if abs(x) >= 1:
            return f"{x:.2f}"
        return f"{x:.3f}"
    return f"{f(s['median'])} ({f(s['min'])}–{f(s['max'])})"
