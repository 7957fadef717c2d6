"""BitTorrent references for the benchmarks: Debian's `aria2c` as seeder
and downloaders, `opentracker` as the tracker and `mktorrent` to make the
torrent. Three uses, each in the same run as p2pfs:

- benchmark 1 (`Seed.fetch`): one aria2c seeder and a fresh aria2c
  downloader per repetition on loopback, timed from its start to its exit
  (the issue that set the goals measured "BitTorrent from aria2 to aria2c
  about 4.8 s including start-up" for 1 GiB) and from its first piece to
  its last;
- benchmark 3 (`swarm_once`): a seeder and N leechers in the network
  namespaces of bench/swarm.py;
- benchmark 7 (`crowd_once`): a seeder and K downloaders on loopback.

Only the options that keep the transfers among these processes are set
(no DHT, no local peer discovery, no peer exchange), plus space allocated
up front (`falloc`, as p2pfs does); everything else is aria2's default,
including unencrypted connections. Pieces are 256 KiB (`mktorrent`'s
default), each checked against its SHA-1 as it arrives.
"""

import datetime
import json
import os
import re
import socket
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import harness as H

TOOLS = ("aria2c", "mktorrent", "opentracker")

# Options for both aria2c processes.
ARIA2_COMMON = [
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=false",
    "--console-log-level=warn",
    "--summary-interval=0",
    "--file-allocation=falloc",
]


def available():
    """True when aria2c, mktorrent and opentracker are installed."""
    return all(shutil.which(t) for t in TOOLS)


class Torrent:
    """A torrent of `src` and an `opentracker` for it on `ip`, until
    `close`."""

    def __init__(self, work, src, logdir, ip="127.0.0.1", tag="bt"):
        self.src = src
        self.dir = os.path.join(work, f"{tag}-{os.path.basename(src)}")
        os.makedirs(self.dir, exist_ok=True)
        self.logdir = logdir
        self.procs = []
        H.CLEANUP.add(self.stop_procs)
        self.ip = ip
        self.tracker_port = H.free_port()
        announce = f"http://{ip}:{self.tracker_port}/announce"
        self.torrent = os.path.join(self.dir, "f.torrent")
        H.remove(self.torrent)
        subprocess.run(["mktorrent", "-a", announce, "-o", self.torrent, src],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.info_hash = info_hash(self.torrent)
        # Debian's opentracker serves only the torrents on its whitelist.
        whitelist = os.path.join(self.dir, "whitelist")
        with open(whitelist, "w") as f:
            f.write(self.info_hash + "\n")
        # Run as root, it changes its root to its working directory (-d) and
        # reads the whitelist there.
        self.spawn("opentracker", ["opentracker", "-i", ip, "-p", str(self.tracker_port),
                                   "-P", str(self.tracker_port), "-d", self.dir,
                                   "-w", os.path.basename(whitelist)])
        # It reads the whitelist on a thread of its own after it starts
        # listening; an announce refused meanwhile is retried by aria2c only
        # minutes later.
        wait_for(self._authorized, 10, "opentracker did not accept the torrent")

    def wait_seeders(self, n, secs, tag):
        """Waits until the tracker lists `n` seeders; `tag` names the log
        to quote if it does not."""
        wait_for(lambda: (self._scrape() or 0) >= n, secs,
                 lambda: f"{tag} did not announce itself: " + self._log_tail(tag))

    def spawn(self, tag, cmd):
        """Starts `cmd`, its output in the log `tag`; stopped by `close`."""
        log = open(os.path.join(self.logdir, f"{tag}.log"), "ab")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                             start_new_session=True)
        log.close()
        self.procs.append(p)
        return p

    def stop_procs(self):
        """Stops every process it started that is still listed."""
        self.stop(list(self.procs))

    def stop(self, procs):
        """Stops `procs`, some of the processes it started."""
        stop_all(procs)
        self.procs = [p for p in self.procs if p not in procs]

    def _log_tail(self, tag):
        try:
            with open(os.path.join(self.logdir, f"{tag}.log"), errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            return "(no log)"

    def _get(self, path):
        try:
            with urllib.request.urlopen(f"http://{self.ip}:{self.tracker_port}{path}",
                                        timeout=2) as r:
                return r.read()
        except OSError:
            return None

    def _authorized(self):
        """True once the tracker answers an announce for the torrent without
        a failure. (It checks the whitelist only for announces that add a
        peer, so the probe adds one and then takes it back with a `stopped`
        event.)"""
        q = urllib.parse.quote_from_bytes(bytes.fromhex(self.info_hash))
        probe = (f"/announce?info_hash={q}&peer_id=-BENCH-0000000000000&port=1"
                 "&uploaded=0&downloaded=0&left=0&compact=1")
        body = self._get(probe)
        if body is None or b"failure reason" in body:
            return False
        self._get(probe + "&event=stopped")
        return True

    def _scrape(self):
        """Seeders the tracker lists for the torrent, or None if it does not
        answer."""
        q = urllib.parse.quote_from_bytes(bytes.fromhex(self.info_hash))
        body = self._get(f"/scrape?info_hash={q}")
        if body is None:
            return None
        m = re.search(rb"8:completei(\d+)e", body)
        return int(m.group(1)) if m else 0

    def close(self):
        self.stop_procs()
        shutil.rmtree(self.dir, ignore_errors=True)


class Seed(Torrent):
    """A torrent of `src` on loopback with an `aria2c` seeding it, for
    single-source fetches."""

    def __init__(self, work, src, logdir):
        super().__init__(work, src, logdir)
        self.spawn("aria2-seed", ["aria2c", *ARIA2_COMMON, f"--dir={os.path.dirname(src)}",
                                  "--seed-ratio=0.0", "--bt-seed-unverified=true",
                                  f"--listen-port={H.free_port()}", self.torrent])
        self.wait_seeders(1, 30, "aria2-seed")

    def fetch(self, size, timeout=600):
        """A fresh aria2c downloads and checks the whole file into a new
        directory. Returns (seconds from its start to its exit, seconds from
        its first piece to its last in its log).

        Most of the first figure is aria2's own pace, not the transfer: its
        event loop acts on a one-second tick, so the announce, the
        connection, the last announce and the exit each wait for one (1 GiB
        here: about 5 s of 6.9 s, pieces for 1.8 s; 32 MiB: 4.6 s in all)."""
        dest = os.path.join(self.dir, "dl")
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        H.sync()
        info = os.path.join(self.dir, "fetch-info.log")
        H.remove(info)
        with open(os.path.join(self.logdir, "aria2-fetch.log"), "ab") as log:
            t0 = time.monotonic()
            r = subprocess.run(["aria2c", *ARIA2_COMMON, f"--dir={dest}", "--seed-time=0",
                                f"--listen-port={H.free_port()}", f"--log={info}",
                                "--log-level=info", self.torrent],
                               stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            secs = time.monotonic() - t0
        got = os.path.join(dest, os.path.basename(self.src))
        ok = r.returncode == 0 and os.path.exists(got) and os.path.getsize(got) == size
        shutil.rmtree(dest, ignore_errors=True)
        if not ok:
            raise RuntimeError(f"aria2c fetch failed (exit {r.returncode}); see aria2-fetch.log")
        return secs, transfer_secs(info)


# Ports of each namespaced aria2c (every host has its own addresses).
PEER_PORT = 6881
RPC_PORT = 6800


def swarm_once(torrent, net, size, n, root, timeout):
    """One BitTorrent distribution in the namespaces of `net` (bench/swarm.py):
    an aria2c seeder on host 0 and `n` aria2c leechers on hosts 1..n, each
    leecher started paused, then all unpaused at once over JSON-RPC (as
    p2pfs's daemons are running before their fetches are issued). Leechers
    keep seeding once complete, as p2pfs peers keep serving.

    Returns each leecher's completion, in seconds from the unpause: the
    moment its log says "The download was complete." right after its last
    piece matched its hash. (aria2c prints "Download complete" only when
    it stops seeding.)"""
    procs = []
    try:
        procs.append(torrent.spawn(f"bt-seed-{n}", [
            "ip", "netns", "exec", net.ns(0), "aria2c", *ARIA2_COMMON,
            f"--dir={os.path.dirname(torrent.src)}", "--seed-ratio=0.0",
            "--bt-seed-unverified=true", f"--listen-port={PEER_PORT}", torrent.torrent]))
        torrent.wait_seeders(1, 30, f"bt-seed-{n}")
        logs = []
        for i in range(1, n + 1):
            d = os.path.join(root, f"bt{i}")
            os.makedirs(d)
            logs.append(os.path.join(root, f"bt{i}.log"))
            procs.append(torrent.spawn(f"bt-leech-{i}", [
                "ip", "netns", "exec", net.ns(i), "aria2c", *ARIA2_COMMON, f"--dir={d}",
                "--seed-ratio=0.0", f"--listen-port={PEER_PORT}", f"--log={logs[-1]}",
                "--log-level=info", "--enable-rpc=true", "--rpc-listen-all=true",
                f"--rpc-listen-port={RPC_PORT}", "--pause=true", torrent.torrent]))
        hosts = [net.ip(i) for i in range(1, n + 1)]
        for h in hosts:
            wait_for(lambda h=h: rpc(h, "aria2.getVersion") is not None, 30,
                     f"aria2c on {h} did not answer JSON-RPC")
        t0 = unpause_together(hosts)
        end = time.time() + timeout
        done = [None] * n
        while None in done:
            if time.time() > end:
                raise RuntimeError(f"BitTorrent swarm: {done.count(None)} of {n} leechers "
                                   f"not done after {timeout:.0f} s")
            for j, log in enumerate(logs):
                if done[j] is None:
                    done[j] = completed_at(log)
            time.sleep(0.2)
        check_sizes(torrent, [os.path.join(root, f"bt{i}") for i in range(1, n + 1)], size,
                    "BitTorrent swarm")
        return [t - t0 for t in done]
    finally:
        torrent.stop(procs)


def check_sizes(torrent, dirs, size, what):
    """Raises unless each of `dirs` holds the torrent's file at full size."""
    for d in dirs:
        got = os.path.join(d, os.path.basename(torrent.src))
        if os.path.getsize(got) != size:
            raise RuntimeError(f"{what}: {got} has the wrong size")


def rpc(host, method, port=RPC_PORT):
    """aria2c's JSON-RPC `method` on `host`: its result, or None."""
    body = json.dumps({"jsonrpc": "2.0", "id": "b", "method": method}).encode()
    req = urllib.request.Request(f"http://{host}:{port}/jsonrpc", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return json.loads(r.read()).get("result")
    except (OSError, ValueError):
        return None


def unpause_together(hosts, ports=None):
    """Sends `aria2.unpauseAll` to every host (JSON-RPC on `ports`, one per
    host, or RPC_PORT) in one go: connections opened first, then every
    request written, then the answers read. Returns the wall-clock time
    just before the first request was written."""
    body = json.dumps({"jsonrpc": "2.0", "id": "u", "method": "aria2.unpauseAll"}).encode()
    ports = ports or [RPC_PORT] * len(hosts)
    socks = [socket.create_connection((h, p), timeout=10) for h, p in zip(hosts, ports)]
    try:
        t0 = time.time()
        for h, sock in zip(hosts, socks):
            sock.sendall(f"POST /jsonrpc HTTP/1.1\r\nHost: {h}\r\n"
                         "Content-Type: application/json\r\nConnection: close\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        for h, sock in zip(hosts, socks):
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            if b'"result":"OK"' not in answer:
                raise RuntimeError(f"aria2c on {h} refused unpauseAll: {answer[:300]!r}")
    finally:
        for sock in socks:
            sock.close()
    return t0


def crowd_once(torrent, size, k, root, timeout, settle=None):
    """Benchmark 7 with BitTorrent: an aria2c seeder and `k` aria2c
    downloaders on loopback, each started paused, then all unpaused at once
    over JSON-RPC. Downloaders go on seeding once complete (as p2pfs peers
    go on serving); each records the moment its download completes with
    aria2c's --on-bt-download-complete hook (run before it starts seeding).

    `settle`, if given, is called right before the unpause (see
    `harness.settle_memory`).

    Returns each downloader's completion, in seconds from the unpause."""
    procs = []
    os.makedirs(root, exist_ok=True)
    done_file = os.path.join(root, "done.txt")
    hook = os.path.join(root, "done.sh")
    with open(hook, "w") as f:
        f.write(f'#!/bin/sh\nprintf "%s %s\\n" "$(date +%s.%N)" "$3" >> {done_file}\n')
    os.chmod(hook, 0o755)
    try:
        procs.append(torrent.spawn("bt-crowd-seed", [
            "aria2c", *ARIA2_COMMON, f"--dir={os.path.dirname(torrent.src)}",
            "--seed-ratio=0.0", "--bt-seed-unverified=true", f"--listen-port={H.free_port()}",
            torrent.torrent]))
        torrent.wait_seeders(1, 30, "bt-crowd-seed")
        free = H.free_ports(2 * k)
        ports = free[:k]
        for j in range(k):
            d = os.path.join(root, f"c{j}")
            os.makedirs(d)
            procs.append(torrent.spawn("bt-crowd", [
                "aria2c", *ARIA2_COMMON, f"--dir={d}", "--seed-ratio=0.0",
                f"--listen-port={free[k + j]}", "--enable-rpc=true",
                f"--rpc-listen-port={ports[j]}", "--pause=true",
                f"--on-bt-download-complete={hook}", torrent.torrent]))
        for port in ports:
            wait_for(lambda port=port: rpc("127.0.0.1", "aria2.getVersion", port) is not None,
                     60, f"aria2c with JSON-RPC on port {port} did not answer")
        if settle:
            settle()
        t0 = unpause_together(["127.0.0.1"] * k, ports)
        end = time.time() + timeout
        while True:
            stamps = read_done(done_file)
            if len(stamps) >= k:
                break
            if time.time() > end:
                raise RuntimeError(f"BitTorrent crowd: {k - len(stamps)} of {k} downloaders "
                                   f"not done after {timeout:.0f} s"
                                   + stopped_downloads(ports))
            time.sleep(0.2)
        check_sizes(torrent, [os.path.join(root, f"c{j}") for j in range(k)], size,
                    "BitTorrent crowd")
        return [t - t0 for t in stamps]
    finally:
        torrent.stop(procs)


def stopped_downloads(ports):
    """Why downloads of the aria2c processes with JSON-RPC on `ports`
    stopped with an error, if any did (for the failure message)."""
    why = set()
    for port in ports:
        body = json.dumps({"jsonrpc": "2.0", "id": "s", "method": "aria2.tellStopped",
                           "params": [0, 10, ["status", "errorMessage"]]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/jsonrpc", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                for d in json.loads(r.read()).get("result", []):
                    if d.get("status") == "error":
                        why.add(d.get("errorMessage", "").strip())
        except (OSError, ValueError):
            continue
    return f"; aria2c errors: {sorted(why)}" if why else ""


def read_done(path):
    """The completion times the crowd's hook wrote so far."""
    try:
        with open(path) as f:
            return [float(line.split()[0]) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def completed_at(log):
    """Wall-clock time (seconds since the epoch) at which an aria2c info log
    says the download is complete, or None yet. (The same words also follow
    each tracker request; only the ones right after a piece count.)"""
    previous = ""
    try:
        with open(log, errors="replace") as f:
            for line in f:
                if "The download was complete." in line and "we got new piece" in previous:
                    return datetime.datetime.strptime(line[:26],
                                                      "%Y-%m-%d %H:%M:%S.%f").timestamp()
                previous = line
    except OSError:
        pass
    return None


def transfer_secs(log):
    """Seconds from the first to the last piece received and checked
    ("we got new piece") in an aria2c log written with --log-level=info."""
    first = last = None
    stamp = re.compile(r"^\S+ (\d\d):(\d\d):(\d\d\.\d+) ")
    with open(log, errors="replace") as f:
        for line in f:
            if "we got new piece" in line:
                last = stamp.match(line)
                first = first or last
    if not (first and last):
        raise RuntimeError(f"no pieces in {log}")
    t = [int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) for m in (first, last)]
    return (t[1] - t[0]) % 86400


def info_hash(torrent):
    out = subprocess.run(["aria2c", "-S", torrent], check=True, capture_output=True,
                         text=True).stdout
    m = re.search(r"Info Hash:\s*([0-9a-f]{40})", out)
    if not m:
        raise RuntimeError("aria2c -S printed no info hash")
    return m.group(1)


def wait_for(cond, secs, what):
    """Polls `cond` for up to `secs`; raises with `what` (a string, or a
    function that returns one) if it never held."""
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise RuntimeError(what() if callable(what) else what)


def stop_all(procs, secs=10):
    """SIGTERM to every process at once, then SIGKILL to those still
    running after `secs` (aria2c says goodbye to its tracker first)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    end = time.monotonic() + secs
    for p in procs:
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

