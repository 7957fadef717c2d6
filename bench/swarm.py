"""Benchmark 3: swarm distribution in network namespaces.

One namespace per host (host 0 is the seeder, hosts 1..N the leechers),
each joined to one bridge in the root namespace by a veth pair, with the
host's upload (its veth's egress inside its namespace) shaped by
`tc qdisc ... tbf`. The tracker runs in the root namespace on the bridge's
address; the harness reaches each peer's HTTP API over the bridge.

Every namespace, veth and the bridge are removed by `Net.down()`, which the
harness calls in a `finally` and also registers with the cleanup handler
(so a crash or Ctrl-C removes them too). Names start with `p2pb` and stale
ones from an earlier interrupted run are removed first.
"""

import os
import shutil
import subprocess
import time

import harness as H

PREFIX = "p2pb"
BRIDGE = "p2pb-br"
SUBNET = "10.201.0"


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def available():
    if os.geteuid() != 0:
        return False, "needs root for network namespaces"
    if not shutil.which("ip") or not shutil.which("tc"):
        return False, "needs iproute2 (ip, tc)"
    r = sh("ip", "netns", "add", f"{PREFIX}-probe", check=False)
    if r.returncode != 0:
        return False, f"ip netns add failed: {r.stderr.strip()}"
    sh("ip", "netns", "del", f"{PREFIX}-probe", check=False)
    return True, ""


def bound(size, n, rate_mbit):
    """Lower bound on the last leecher's completion time (seconds) when every
    host uploads at `rate_mbit` and downloads are not limited:
    D = max(F/u_s, F/d_min, N·F/(u_s + Σu_i)), d_min = ∞ here."""
    bits = size * 8
    u = rate_mbit * 1e6
    d = max(bits / u, n * bits / (u + n * u))
    # The shaper counts whole Ethernet frames: at MTU 1500 every 1,448 bytes
    # of TCP payload (with timestamps) travel as 1,514 bytes (TCP 32 + IP 20
    # + Ethernet 14 bytes of headers), so no TCP transfer can beat D_tcp.
    return {"D": d, "D_tcp": d * WIRE_PER_PAYLOAD, "client_server": n * bits / u,
            "F_over_us": bits / u}


WIRE_PER_PAYLOAD = 1514 / 1448


class Net:
    def __init__(self, hosts, rate_mbit):
        self.hosts = hosts
        self.rate = rate_mbit
        self.made = False

    def ns(self, i):
        return f"{PREFIX}-{i}"

    def ip(self, i):
        return f"{SUBNET}.{i + 1}"

    def up(self):
        self.down(quiet=True)  # stale names of an interrupted run
        H.CLEANUP.add(self.down)
        self.made = True
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{SUBNET}.254/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        for i in range(self.hosts):
            ns, a, b = self.ns(i), f"{PREFIX}{i}a", f"{PREFIX}{i}b"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "master", BRIDGE)
            sh("ip", "link", "set", a, "up")
            sh("ip", "link", "set", b, "netns", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", b)
            sh("ip", "-n", ns, "link", "set", b, "up")
            # Upload shaping: token bucket on the host's egress.
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", b, "root", "tbf",
               "rate", f"{self.rate}mbit", "burst", "32kb", "latency", "100ms")
        # Connectivity check: the root namespace reaches the last host.
        if shutil.which("ping"):
            r = sh("ping", "-c", "1", "-W", "2", self.ip(self.hosts - 1), check=False)
            if r.returncode != 0:
                raise RuntimeError(f"bridge not working: {r.stdout} {r.stderr}")

    def down(self, quiet=False):
        removed = False
        out = sh("ip", "netns", "list", check=False).stdout
        for line in out.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(PREFIX + "-"):
                sh("ip", "netns", "del", name, check=False)
                removed = True
        links = sh("ip", "-o", "link", "show", check=False).stdout
        for line in links.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith(PREFIX):
                sh("ip", "link", "del", name, check=False)
                removed = True
        if removed and not quiet:
            H.log("swarm: namespaces, veths and bridge removed")


def run_once(ctx, net, src, size, n):
    """One distribution: seeder on host 0, leechers on hosts 1..n, all
    fetches issued together. Returns each leecher's completion time (s)
    from the moment the fetches were issued, and what each host uploaded
    in file sizes (`seed_up`, `leecher_up`)."""
    root = ctx.fresh_dir(f"swarm{n}")
    tracker = H.start_tracker(root, listen=f"{SUBNET}.254:0", env=ctx.env)
    peers = []
    try:
        for i in range(n + 1):
            peers.append(H.start_peer(root, f"h{i}", tracker, os.path.join(root, f"h{i}"),
                                      listen=f"{net.ip(i)}:0", http=f"{net.ip(i)}:0",
                                      netns=net.ns(i), env=ctx.env, wait=False))
        for p in peers:
            H.peer_ready(p)
        seed, leechers = peers[0], peers[1:]
        H.publish(seed, src, "f")
        H.wait_listed(tracker, "f")
        ctx.prepare_cache(src)
        watchers = [H.EndWatcher(p.api) for p in leechers]
        ids, t0 = H.start_fetches_together(
            leechers, "f", [os.path.join(root, f"out{j}") for j in range(n)])
        times = []
        for w, dl_id in zip(watchers, ids):
            t, end = w.wait(dl_id, 1800)
            if end["state"] != "done":
                raise RuntimeError(f"swarm: a download ended {end['state']}: {end['error']}")
            times.append(t - t0)
        for w in watchers:
            w.close()
        # What each host uploaded: the seeder's share shows duplicates
        # (ideal: exactly F once), the leechers' shows how much they relayed.
        up = [H.http_json(p.api, "GET", "/api/status")["uploaded_bytes"] for p in peers]
        for j in range(n):
            if os.path.getsize(os.path.join(root, f"out{j}")) != size:
                raise RuntimeError("swarm: a leecher's file has the wrong size")
        return times, {"seed_up": up[0] / size, "leecher_up": [u / size for u in up[1:]]}
    finally:
        H.stop_all(peers + [tracker])
        shutil.rmtree(root, ignore_errors=True)
