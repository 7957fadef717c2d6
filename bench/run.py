#!/usr/bin/env python3
"""p2pfs benchmark suite (issue 6). Python 3 standard library only.

    python3 bench/run.py            # full suite: builds, measures, rewrites the
                                    # results section of BENCHMARKS.md
    python3 bench/run.py --quick    # every benchmark once, tiny sizes (CI smoke
                                    # test: checks that each runs, asserts no timing)
    python3 bench/run.py --only single,publish --runs 7

Every figure is a median of --runs repetitions (min–max shown) and, where a
goal is a ratio, the ratio is computed per repetition against a reference
measured in the same repetition (same run, interleaved order), then
summarised. See BENCHMARKS.md for what each benchmark does and why.
"""

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bittorrent as BT  # noqa: E402
import pyref  # noqa: E402
import harness as H  # noqa: E402
import swarm as S  # noqa: E402
import svgplot  # noqa: E402

BENCHES = ["single", "multi", "publish", "many", "swarm", "tracker"]


class Ctx:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.runs = args.runs
        self.files = {}
        self.logdir = os.path.join(work, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.env = dict(os.environ)
        if args.tunables:
            self.env["GLIBC_TUNABLES"] = "glibc.cpu.x86_rep_movsb_threshold=2097152"
        self.seq = 0

    def file(self, size):
        """A random file of `size` bytes (made once per size)."""
        if size not in self.files:
            need = size * 2 + 256 * H.MiB
            if H.free_bytes(self.work) < need:
                raise RuntimeError(f"not enough free space in {self.work} for {size} bytes")
            path = os.path.join(self.work, f"src-{size}")
            H.log(f"creating {size / H.MiB:.0f} MiB random file")
            H.make_random_file(path, size)
            self.files[size] = path
        return self.files[size]

    def drop_file(self, size):
        if size in self.files:
            H.remove(self.files.pop(size))

    def fresh_dir(self, tag, base=None):
        self.seq += 1
        d = os.path.join(base or self.work, f"{tag}-{self.seq}")
        os.makedirs(d)
        return d

    def prepare_cache(self, src):
        """The page-cache policy, identical for p2pfs and the references:
        flush dirty pages of earlier runs, then either drop every cache
        (--drop-caches: the source is read from disk) or make sure the
        source is cached (default)."""
        H.sync()
        if self.args.drop_caches:
            H.drop_caches()
        else:
            H.warm(src)


def rotated(items, i):
    i %= len(items)
    return items[i:] + items[:i]


def size_label(size):
    if size >= H.GiB and size % H.GiB == 0:
        return f"{size // H.GiB} GiB"
    return f"{size / H.MiB:.0f} MiB"


# ---------------------------------------------------------------- references

def listening(port):
    want = f":{port:04X}"
    for table in ("/proc/net/tcp",):
        with open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[1].endswith(want) and parts[3] == "0A":
                    return True
    return False


def pin_cpu(which):
    """The first (0) or second (1) CPU this process may run on."""
    return sorted(os.sched_getaffinity(0))[which]


def pinned(which):
    """A command prefix that keeps a process (and its threads) on CPU
    `pin_cpu(which)`."""
    return ["taskset", "-c", str(pin_cpu(which))]


def pin_pid(pid, which):
    """Moves every thread of a running process to CPU `pin_cpu(which)`."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(pin_cpu(which)), str(pid)],
                   check=True, capture_output=True)


def can_pin():
    return len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None


def ref_tcpcopy(ctx, src, dst, pin=False, cpu=None):
    """Seconds a raw TCP copy of `src` into `dst` takes. With `cpu` (a dict),
    also stores the CPU seconds of the receiving and sending processes
    under "recv" and "send"."""
    recv = H.spawn((pinned(1) if pin else []) + [H.TCPCOPY, "recv", "127.0.0.1:0", dst],
                   env=ctx.env)
    line = recv.stdout.readline().strip()
    addr = line.rsplit(" ", 1)[1]
    t0 = time.monotonic()
    send = H.spawn((pinned(0) if pin else []) + [H.TCPCOPY, "send", addr, src],
                   stdout=subprocess.DEVNULL, env=ctx.env)
    _, send_status, send_use = os.wait4(send.pid, 0)
    send.returncode = os.waitstatus_to_exitcode(send_status)
    _, recv_status, recv_use = os.wait4(recv.pid, 0)
    recv.returncode = os.waitstatus_to_exitcode(recv_status)
    t = time.monotonic() - t0
    recv.stdout.close()
    if send.returncode != 0:
        raise RuntimeError("tcpcopy send failed")
    if recv.returncode != 0:
        raise RuntimeError("tcpcopy recv failed")
    if cpu is not None:
        cpu["recv"] = recv_use.ru_utime + recv_use.ru_stime
        cpu["send"] = send_use.ru_utime + send_use.ru_stime
    return t


def ref_socat(ctx, src, dst):
    port = H.free_port()
    recv = H.spawn(["socat", "-u", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
                    f"OPEN:{dst},creat,trunc,wronly"], stdout=subprocess.DEVNULL, env=ctx.env)
    deadline = time.monotonic() + 10
    while not listening(port):
        if time.monotonic() > deadline:
            raise RuntimeError("socat did not listen")
        time.sleep(0.005)
    t0 = time.monotonic()
    H.run(["socat", "-u", f"FILE:{src}", f"TCP:127.0.0.1:{port}"], env=ctx.env)
    recv.wait()
    t = time.monotonic() - t0
    if recv.returncode != 0:
        raise RuntimeError("socat recv failed")
    return t


def ref_cp(ctx, src, dst):
    t0 = time.monotonic()
    H.run(["cp", src, dst], env=ctx.env)
    return time.monotonic() - t0


def b3sum_time(ctx, src):
    t0 = time.monotonic()
    H.run(["b3sum", "--no-names", src], stdout=subprocess.DEVNULL, env=ctx.env)
    return time.monotonic() - t0


# ---------------------------------------------------------------- p2pfs set-ups

def swarm_up(ctx, src, names, downloaders=1, tag="p", security="aes-gcm", base=None):
    """A tracker, one seeder per name in `names` (each publishes `src` under
    its name) and `downloaders` fresh peers; returns them once every name is
    listed at the tracker. `security`: "aes-gcm" (the default), "chacha-poly"
    or "plain" (--insecure)."""
    root = ctx.fresh_dir(tag, base)
    insecure = security == "plain"
    env = dict(ctx.env)
    if not insecure:
        env["P2PFS_CIPHER"] = security
    tracker = H.start_tracker(root, env=env, insecure=insecure)
    seeders = [H.start_peer(root, f"seed{i}", tracker, os.path.join(root, f"seed{i}"),
                            env=env, wait=False) for i in range(len(names))]
    dls = [H.start_peer(root, f"dl{i}", tracker, os.path.join(root, f"dl{i}"),
                        env=env, wait=False) for i in range(downloaders)]
    for p in seeders + dls:
        H.peer_ready(p)

    def pub(p, name):
        H.publish(p, src, name)
    ts = [threading.Thread(target=pub, args=(p, n)) for p, n in zip(seeders, names)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for n in names:
        H.wait_listed(tracker, n, sources=len(names))
    return root, tracker, seeders, dls


def p2pfs_fetch_once(ctx, src, size, dst, n_seeders=1, security="aes-gcm", pin=False):
    """One fetch by a fresh downloader from `n_seeders` fresh seeders. With
    `pin`, the seeders' threads stay on one CPU and the downloader's on
    another, as on two hosts (the tracker is left free)."""
    names = [f"f{i}" for i in range(n_seeders)]
    root, tracker, seeders, (dl,) = swarm_up(ctx, src, names, security=security)
    try:
        if pin:
            for s in seeders:
                pin_pid(s.pid, 0)
            pin_pid(dl.pid, 1)
        ctx.prepare_cache(src)
        procs = [dl] + seeders
        cpu0 = [H.proc_cpu(p.pid) for p in procs]
        wall, end = H.timed_fetch(dl, names[0], dst)
        cpu = [H.proc_cpu(p.pid) - c for p, c in zip(procs, cpu0)]
        if os.path.getsize(dst) != size:
            raise RuntimeError("p2pfs: destination has the wrong size")
        mem_dl = dl.mem()
        mem_seed = [s.mem() for s in seeders]
        up = [H.http_json(s.api, "GET", "/api/status")["uploaded_bytes"] for s in seeders]
        return {"wall": wall, "api": end["elapsed_secs"], "hwm_dl": mem_dl["VmHWM"],
                "cpu_dl": cpu[0], "cpu_seed": sum(cpu[1:]),
                "hwm_seed": max(m["VmHWM"] for m in mem_seed), "uploaded": up,
                "sources": end.get("sources")}
    finally:
        H.stop_all(seeders + [dl, tracker])
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- benchmarks

def bench_single(ctx):
    sizes = ([32 * H.MiB] if ctx.args.quick
             else [int(m) * H.MiB for m in ctx.args.single_mib.split(",")])
    out = {}
    for size in sizes:
        src = ctx.file(size)
        dst = os.path.join(ctx.work, "dst")
        H.settle_memory(ctx.work, size)
        rec = {k: [] for k in ("tcpcopy", "socat", "cp", "p2pfs", "p2pfs_api", "hwm_dl",
                               "hwm_seed", "ratio_tcp", "ratio_socat", "ratio_cp",
                               "p2pfs_chacha", "p2pfs_plain", "ratio_tcp_plain",
                               "enc_throughput", "chacha_throughput", "p2pfs_pin",
                               "p2pfs_plain_pin", "tcpcopy_pin", "ratio_tcp_pin",
                               "ratio_tcp_plain_pin", "enc_throughput_pin", "aria2",
                               "aria2_transfer", "ratio_aria2", "ratio_aria2_plain",
                               "ratio_aria2_transfer", "cpu_dl", "cpu_seed",
                               "cpu_dl_plain", "cpu_seed_plain", "cpu_tcp_recv",
                               "cpu_tcp_send", "pyref", "ratio_pyref", "ratio_pyref_plain")}
        # p2pfs: the default (Noise, AES-256-GCM); p2pfs_chacha: the same with
        # ChaCha20-Poly1305; p2pfs_plain: --insecure. Their ratios give the
        # cost of encryption and the cipher choice, measured in the same run.
        # The *_pin methods keep the sending process on one CPU and the
        # receiving one on another (a diagnostic, 1 GiB and smaller only): on 2
        # shared cores the scheduler otherwise moves a fresh process's threads
        # between the cores, which costs a fresh encrypted seeder about a
        # third of its speed (see BENCHMARKS.md).
        methods = ["p2pfs", "p2pfs_chacha", "p2pfs_plain", "tcpcopy", "socat", "cp"]
        if not shutil.which("socat"):
            methods.remove("socat")
        if size <= H.GiB and can_pin():
            methods += ["p2pfs_pin", "p2pfs_plain_pin", "tcpcopy_pin"]
        # BitTorrent (aria2c to aria2c), when its tools are installed.
        bt = None
        if BT.available():
            try:
                bt = BT.Seed(ctx.work, src, ctx.logdir)
                methods.append("aria2")
            except Exception as e:  # noqa: BLE001 - a reference, not p2pfs: go on without it
                H.log(f"single: no BitTorrent reference: {e}")
        else:
            H.log("single: no BitTorrent reference (needs aria2c, mktorrent, opentracker)")
        py = ctx.pyref
        if py:
            methods.append("pyref")
        try:
            single_runs(ctx, src, size, dst, methods, rec, bt, py)
        finally:
            if bt:
                bt.close()
        H.remove(dst)
        out[size_label(size)] = {"size": size, **{k: H.summary(v) for k, v in rec.items()}}
        if size > H.GiB:
            ctx.drop_file(size)
    return out


def single_runs(ctx, src, size, dst, methods, rec, bt, py=None):
    """The repetitions of benchmark 1 for one file size; appends to `rec`."""
    for i in range(ctx.runs):
        got = {}
        for m in rotated(methods, i):
            H.remove(dst)
            H.remove(dst + ".part")
            if m == "p2pfs":
                r = p2pfs_fetch_once(ctx, src, size, dst)
                got["p2pfs"] = r["wall"]
                rec["p2pfs_api"].append(r["api"])
                rec["hwm_dl"].append(r["hwm_dl"])
                rec["hwm_seed"].append(r["hwm_seed"])
                rec["cpu_dl"].append(r["cpu_dl"])
                rec["cpu_seed"].append(r["cpu_seed"])
            elif m in ("p2pfs_chacha", "p2pfs_plain", "p2pfs_pin", "p2pfs_plain_pin"):
                sec = {"p2pfs_chacha": "chacha-poly", "p2pfs_pin": "aes-gcm"}.get(m, "plain")
                r = p2pfs_fetch_once(ctx, src, size, dst, security=sec, pin=m.endswith("_pin"))
                got[m] = r["wall"]
                if m == "p2pfs_plain":
                    rec["cpu_dl_plain"].append(r["cpu_dl"])
                    rec["cpu_seed_plain"].append(r["cpu_seed"])
            elif m == "aria2":
                ctx.prepare_cache(src)
                got[m], transfer = bt.fetch(size)
                rec["aria2_transfer"].append(transfer)
            elif m == "pyref":
                ctx.prepare_cache(src)
                got[m] = py.fetch(src, dst)
            elif m == "tcpcopy_pin":
                ctx.prepare_cache(src)
                got[m] = ref_tcpcopy(ctx, src, dst, pin=True)
                if os.path.getsize(dst) != size:
                    raise RuntimeError(f"{m}: destination has the wrong size")
            elif m == "tcpcopy":
                ctx.prepare_cache(src)
                cpu = {}
                got[m] = ref_tcpcopy(ctx, src, dst, cpu=cpu)
                rec["cpu_tcp_recv"].append(cpu["recv"])
                rec["cpu_tcp_send"].append(cpu["send"])
                if os.path.getsize(dst) != size:
                    raise RuntimeError(f"{m}: destination has the wrong size")
            else:
                ctx.prepare_cache(src)
                fn = {"socat": ref_socat, "cp": ref_cp}[m]
                got[m] = fn(ctx, src, dst)
                if os.path.getsize(dst) != size:
                    raise RuntimeError(f"{m}: destination has the wrong size")
        for k, v in got.items():
            rec[k].append(v)
        rec["ratio_tcp"].append(got["tcpcopy"] / got["p2pfs"])
        rec["ratio_tcp_plain"].append(got["tcpcopy"] / got["p2pfs_plain"])
        # Throughput with encryption relative to plain (1.0 = free).
        rec["enc_throughput"].append(got["p2pfs_plain"] / got["p2pfs"])
        rec["chacha_throughput"].append(got["p2pfs_plain"] / got["p2pfs_chacha"])
        if "tcpcopy_pin" in got:
            rec["ratio_tcp_pin"].append(got["tcpcopy_pin"] / got["p2pfs_pin"])
            rec["ratio_tcp_plain_pin"].append(got["tcpcopy_pin"] / got["p2pfs_plain_pin"])
            rec["enc_throughput_pin"].append(got["p2pfs_plain_pin"] / got["p2pfs_pin"])
        if "socat" in got:
            rec["ratio_socat"].append(got["socat"] / got["p2pfs"])
        if "aria2" in got:
            rec["ratio_aria2"].append(got["aria2"] / got["p2pfs"])
            rec["ratio_aria2_plain"].append(got["aria2"] / got["p2pfs_plain"])
            rec["ratio_aria2_transfer"].append(rec["aria2_transfer"][-1] / got["p2pfs"])
        if "pyref" in got:
            rec["ratio_pyref"].append(got["pyref"] / got["p2pfs"])
            rec["ratio_pyref_plain"].append(got["pyref"] / got["p2pfs_plain"])
        rec["ratio_cp"].append(got["cp"] / got["p2pfs"])
        H.log(f"single {size_label(size)} run {i + 1}: " +
              ", ".join(f"{k} {v:.3f}s" for k, v in got.items()))


def bench_multi(ctx):
    size = 32 * H.MiB if ctx.args.quick else H.GiB
    n = 4
    src = ctx.file(size)
    dst = os.path.join(ctx.work, "dst")
    H.settle_memory(ctx.work, size)
    rec = {k: [] for k in ("multi", "single", "ratio", "max_share", "min_share", "sources")}
    splits = []
    for i in range(ctx.runs):
        got = {}
        for m in rotated(["multi", "single"], i):
            H.remove(dst)
            r = p2pfs_fetch_once(ctx, src, size, dst, n_seeders=n if m == "multi" else 1)
            got[m] = r["wall"]
            if m == "multi":
                up = r["uploaded"]
                even = size / n
                splits.append(up)
                rec["max_share"].append(max(up) / even)
                rec["min_share"].append(min(up) / even)
        rec["multi"].append(got["multi"])
        rec["single"].append(got["single"])
        rec["ratio"].append(got["multi"] / got["single"])
        H.log(f"multi run {i + 1}: 4 sources {got['multi']:.3f}s, 1 source "
              f"{got['single']:.3f}s, uploads {[round(u / H.MiB) for u in splits[-1]]} MiB")
    H.remove(dst)
    res = {k: H.summary(v) for k, v in rec.items() if k != "sources"}
    res["size"] = size
    res["splits_mib"] = [[round(u / H.MiB, 1) for u in s] for s in splits]
    return res


def bench_publish(ctx):
    size = 32 * H.MiB if ctx.args.quick else H.GiB
    src = ctx.file(size)
    rec = {k: [] for k in ("publish", "b3sum", "ratio", "republish", "hwm_pub")}
    for i in range(ctx.runs):
        got = {}
        for m in rotated(["publish", "b3sum"], i):
            ctx.prepare_cache(src)
            if m == "b3sum":
                got["b3sum"] = b3sum_time(ctx, src)
                continue
            root = ctx.fresh_dir("pub")
            repo = os.path.join(root, "repo")
            tracker = H.start_tracker(root, env=ctx.env)
            peer = H.start_peer(root, "peer", tracker, repo, env=ctx.env)
            try:
                t0 = time.monotonic()
                H.publish(peer, src, "f")
                t1, _ = H.wait_listed(tracker, "f")
                got["publish"] = t1 - t0
                rec["hwm_pub"].append(peer.mem()["VmHWM"])
                # Re-publish the unchanged file: the peer exits and a new
                # process starts on the same repository. The peer re-publishes
                # unchanged files from its SQLite repository by itself (same
                # size and mtime: no re-hash), so this is the time from
                # starting the process to the name listed at the tracker
                # (process start and tracker connection included).
                H.stop_all([peer])
                deadline = time.monotonic() + 10
                while H.http_json(tracker.api, "GET", "/api/files")["files"]:
                    if time.monotonic() > deadline:
                        raise RuntimeError("old publication still listed")
                    time.sleep(0.01)
                ctx.prepare_cache(src)
                t0 = time.monotonic()
                peer = H.start_peer(root, "peer2", tracker, repo, env=ctx.env)
                t1, _ = H.wait_listed(tracker, "f", timeout=60)
                got["republish"] = t1 - t0
            finally:
                H.stop_all([peer, tracker])
                shutil.rmtree(root, ignore_errors=True)
        for k, v in got.items():
            rec[k].append(v)
        rec["ratio"].append(got["publish"] / got["b3sum"])
        H.log(f"publish run {i + 1}: " + ", ".join(f"{k} {v:.3f}s" for k, v in got.items()))
    res = {k: H.summary(v) for k, v in rec.items()}
    res["size"] = size
    return res


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def many_tmpfs(ctx, need):
    """A tmpfs for benchmark 7's downloads, or None (not root, too little
    memory, --many-disk, quick mode, or the mount fails). 200 × 64 MiB of
    writes exceed the kernel's dirty-page limits, so on disk the run is
    bound by the disk's write-back rate (about 280 MB/s here), which the
    single-stream reference, 64 MiB into the page cache, never meets."""
    if ctx.args.many_disk or ctx.args.quick or os.geteuid() != 0:
        return None
    if mem_available() < need + 4 * H.GiB:
        H.log(f"many: too little memory for a {need / H.GiB:.1f} GiB tmpfs; files go to disk")
        return None
    mnt = os.path.join(ctx.work, "many-tmpfs")
    os.makedirs(mnt, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={need}", "tmpfs", mnt],
                       capture_output=True, text=True)
    if r.returncode != 0:
        H.log(f"many: cannot mount a tmpfs ({r.stderr.strip()}); files go to disk")
        return None
    H.CLEANUP.add(lambda: subprocess.run(["umount", "-l", mnt], capture_output=True))
    return mnt


def bench_many(ctx):
    k = ctx.args.many if not ctx.args.quick else 4
    size = 64 * H.MiB if not ctx.args.quick else 8 * H.MiB
    src = ctx.file(size)
    need = (k + 2) * size + 512 * H.MiB
    mnt = many_tmpfs(ctx, need)
    try:
        res = many_runs(ctx, k, size, src, need, mnt)
    finally:
        if mnt:
            subprocess.run(["umount", mnt], capture_output=True)
    res["medium"] = "tmpfs" if mnt else "disk"
    res["security"] = ctx.args.many_security
    return res


def many_runs(ctx, k, size, src, need, mnt):
    if H.free_bytes(mnt or ctx.work) < need:
        raise RuntimeError(f"many: need {need / H.GiB:.1f} GiB free")
    rec = {k_: [] for k_ in ("total", "single", "ratio", "median_dl", "startup", "hwm_seed",
                             "hwm_dl_max", "rss_sum", "floor", "vs_floor", "bt_total",
                             "bt_median", "vs_bt", "bt_failed", "cpu_single",
                             "cpu_crowd", "cpu_crowd_seed", "cpu_crowd_tracker", "sent")}
    if not BT.available():
        H.log("many: no BitTorrent reference (needs aria2c, mktorrent, opentracker)")
    failed = []
    for i in range(ctx.runs):
        try:
            many_once(ctx, i, k, size, src, mnt, rec)
        except Exception as e:  # noqa: BLE001 - 200 processes on 2 cores: report, go on
            H.log(f"many run {i + 1} FAILED: {e!r}")
            failed.append(f"run {i + 1}: {e!r}")
    if not rec["total"]:
        raise RuntimeError(f"every repetition failed: {failed}")
    bt_failed = rec.pop("bt_failed")
    res = {k_: H.summary(v) for k_, v in rec.items()}
    res["bt_failed"] = bt_failed
    res["size"] = size
    res["downloaders"] = k
    res["singles"] = 1 if ctx.args.quick else MANY_SINGLES
    res["failed"] = failed
    return res


# Single-stream fetches per repetition of benchmark 7; their median is the
# reference.
MANY_SINGLES = 3


def many_once(ctx, i, k, size, src, mnt, rec):
    """Repetition `i` of benchmark 7; appends its figures to `rec`."""
    t_up = time.monotonic()
    singles = 1 if ctx.args.quick else MANY_SINGLES
    root, tracker, (seed,), dls = swarm_up(ctx, src, ["f"], downloaders=k + singles, tag="many",
                                           security=ctx.args.many_security, base=mnt)
    startup = time.monotonic() - t_up
    try:
        ctx.prepare_cache(src)
        # Single stream, same seeder, same run: extra downloaders, one after
        # the other, each stopped once done so that the crowd fetches from
        # the seeder and each other only (they legitimately hold the file).
        # A 64 MiB fetch takes 0.06-0.14 s here, so one alone swung the
        # ratio by a factor of two; the median of a few is steadier.
        times = []
        cpus = []
        for j in range(singles):
            procs = [dls[j], seed, tracker]
            cpu0 = [H.proc_cpu(p.pid) for p in procs]
            t, _ = H.timed_fetch(dls[j], "f", os.path.join(root, f"single{j}"))
            cpus.append(sum(H.proc_cpu(p.pid) - c for p, c in zip(procs, cpu0)))
            times.append(t)
            H.remove(os.path.join(root, f"single{j}"))
            H.stop_all([dls[j]])
        single = statistics.median(times)
        H.log(f"many run {i + 1}: single streams {', '.join(f'{t:.3f}' for t in times)}s")
        H.sync()
        dls = dls[singles:]
        watchers = [H.EndWatcher(d.api) for d in dls]
        # Both crowds start right after the same write and delete of their
        # bytes, so that neither meets memory the VM's host has taken back
        # while the other reuses memory it still backs (see "Many
        # downloaders: what a first touch of memory costs on this VM").
        H.settle_memory(root, len(dls) * size)
        crowd = dls + [seed, tracker]
        seed_up0 = H.http_json(seed.api, "GET", "/api/status")["uploaded_bytes"]
        cpu0 = [H.proc_cpu(p.pid) for p in crowd]
        ids, t0 = H.start_fetches_together(
            dls, "f", [os.path.join(root, f"out{j}") for j in range(len(dls))])
        ends = []
        for w, dl_id in zip(watchers, ids):
            t, end = w.wait(dl_id, max(1, ctx.args.many_timeout - (time.monotonic() - t0)))
            if end["state"] != "done":
                raise RuntimeError(f"many: a download ended {end['state']}: {end['error']}")
            ends.append(t - t0)
        cpu = [H.proc_cpu(p.pid) - c for p, c in zip(crowd, cpu0)]
        sent = sum(H.http_json(p.api, "GET", "/api/status")["uploaded_bytes"]
                   for p in dls + [seed]) - seed_up0
        mems = [d.mem() for d in dls]
        seed_mem = seed.mem()
        for w in watchers:
            w.close()
        total = max(ends)
        rec["total"].append(total)
        rec["single"].append(single)
        rec["ratio"].append(total / (len(dls) * single))
        rec["median_dl"].append(statistics.median(ends))
        rec["startup"].append(startup)
        rec["hwm_seed"].append(seed_mem["VmHWM"])
        # CPU seconds of every p2pfs process per GiB delivered: the crowd
        # and the single stream each had the machine to themselves.
        rec["cpu_single"].append(statistics.median(cpus) / (size / H.GiB))
        rec["cpu_crowd"].append(sum(cpu) / (len(dls) * size / H.GiB))
        rec["cpu_crowd_seed"].append(cpu[-2])
        rec["cpu_crowd_tracker"].append(cpu[-1])
        # Chunk bytes sent, per byte delivered (above 1: chunks fetched
        # twice, in the endgame or after a stalled source).
        rec["sent"].append(sent / (len(dls) * size))
        rec["hwm_dl_max"].append(max(m["VmHWM"] for m in mems))
        rec["rss_sum"].append(sum(m["VmRSS"] for m in mems))
        # The least time writing the crowd's bytes takes here, into the
        # memory the crowd just freed (so, if anything, a low floor; the
        # crowd itself runs as before, after the single stream). The
        # downloaders hold their files open: stop them first.
        H.stop_all(dls)
        for j in range(len(dls)):
            H.remove(os.path.join(root, f"out{j}"))
        H.sync()
        floor = H.write_floor(root, len(dls) * size)
        rec["floor"].append(floor)
        rec["vs_floor"].append(total / floor)
        H.log(f"many run {i + 1}: {len(dls)} downloaders total {total:.2f}s, single "
              f"{single:.3f}s, ratio {total / (len(dls) * single):.3f}; writing their bytes "
              f"alone {floor:.2f}s")
        if BT.available():
            try:
                bt_crowd(ctx, root, src, size, len(dls), rec)
            except Exception as e:  # noqa: BLE001 - the reference failed, not p2pfs
                H.log(f"many run {i + 1}: BitTorrent reference FAILED: {e!r}")
                rec["bt_failed"].append(f"run {i + 1}: {e!r}")
    finally:
        H.stop_all([seed, tracker] + dls)
        shutil.rmtree(root, ignore_errors=True)
        H.sync()


def bt_crowd(ctx, root, src, size, k, rec):
    """The same crowd with BitTorrent (bittorrent.crowd_once), into the same
    folder once p2pfs's files are gone; appends to `rec`."""
    torrent = BT.Torrent(root, src, ctx.logdir, tag="bt-crowd")
    try:
        done = BT.crowd_once(torrent, size, k, os.path.join(root, "bt-crowd"),
                             timeout=ctx.args.many_timeout,
                             settle=lambda: H.settle_memory(root, k * size))
    finally:
        torrent.close()
        shutil.rmtree(os.path.join(root, "bt-crowd"), ignore_errors=True)
        H.sync()
    total = max(done)
    rec["bt_total"].append(total)
    rec["bt_median"].append(statistics.median(done))
    rec["vs_bt"].append(total / rec["total"][-1])
    H.log(f"many: BitTorrent (aria2c), {k} downloaders: all done {total:.2f}s, median "
          f"{statistics.median(done):.2f}s")


def bench_swarm(ctx):
    ok, why = S.available()
    if not ok:
        H.log(f"swarm: skipped ({why})")
        return {"skipped": why}
    ns_list = [2] if ctx.args.quick else ctx.args.swarm_n
    size = 4 * H.MiB if ctx.args.quick else 64 * H.MiB
    rate = ctx.args.swarm_rate
    src = ctx.file(size)
    net = S.Net(max(ns_list) + 1, rate_mbit=rate)
    out = {}
    # BitTorrent in the same namespaces, after p2pfs at each N, when its
    # tools are installed.
    bt = BT.available()
    if not bt:
        H.log("swarm: no BitTorrent reference (needs aria2c, mktorrent, opentracker)")
    try:
        net.up()
        for n in ns_list:
            rec = {k: [] for k in ("median", "last", "ratio_median", "ratio_last", "seed_up",
                                   "bt_median", "bt_last", "bt_ratio_median", "bt_ratio_last")}
            curves = []
            bt_curves = []
            bound = S.bound(size, n, rate)
            for i in range(ctx.runs):
                times, up = S.run_once(ctx, net, src, size, n)
                med, last = statistics.median(times), max(times)
                rec["seed_up"].append(up["seed_up"])
                rec["median"].append(med)
                rec["last"].append(last)
                rec["ratio_median"].append(med / bound["D"])
                rec["ratio_last"].append(last / bound["D"])
                curves.append(sorted(times))
                H.log(f"swarm N={n} run {i + 1}: median {med:.2f}s last {last:.2f}s "
                      f"(bound {bound['D']:.2f}s); seeder uploaded {up['seed_up']:.2f} F, "
                      f"leechers {min(up['leecher_up']):.2f}-{max(up['leecher_up']):.2f} F")
            # BitTorrent's repetitions after all of p2pfs's, so that nothing
            # left of one (connections closing, files being freed) can touch
            # the other.
            bt_failed = []
            for i in range(ctx.runs if bt else 0):
                try:
                    bt_once(ctx, src, net, size, n, bound, rec, bt_curves, i)
                except Exception as e:  # noqa: BLE001 - the reference failed, not p2pfs
                    H.log(f"swarm N={n} run {i + 1}: BitTorrent reference FAILED: {e!r}")
                    bt_failed.append(f"run {i + 1}: {e!r}")
            out[str(n)] = {**{k: H.summary(v) for k, v in rec.items()}, **bound,
                           "curves": curves, "bt_curves": bt_curves, "bt_failed": bt_failed}
    finally:
        net.down()
    out["size"] = size
    out["rate_mbit"] = rate
    return out


def bt_once(ctx, src, net, size, n, bound, rec, curves, i):
    """Repetition `i` of the BitTorrent swarm (bittorrent.swarm_once), with
    a tracker of its own; appends to `rec` and `curves`."""
    root = ctx.fresh_dir(f"bt-swarm{n}")
    torrent = BT.Torrent(root, src, ctx.logdir, ip=f"{S.SUBNET}.254")
    try:
        done = BT.swarm_once(torrent, net, size, n, root, timeout=max(300, 20 * bound["D"]))
    finally:
        torrent.close()
        shutil.rmtree(root, ignore_errors=True)
    med, last = statistics.median(done), max(done)
    rec["bt_median"].append(med)
    rec["bt_last"].append(last)
    rec["bt_ratio_median"].append(med / bound["D"])
    rec["bt_ratio_last"].append(last / bound["D"])
    curves.append(sorted(done))
    H.log(f"swarm N={n} run {i + 1}, BitTorrent (aria2c): median {med:.2f}s last {last:.2f}s")


def bench_tracker(ctx):
    """Benchmark 6: a tracker (encrypted, the default) filled with --tracker-peers
    peers and --tracker-files files by `trackerload`, then --tracker-conns of
    those connections keep requests in flight (file location and chunk
    register, alternately) for --tracker-secs: the most requests/s, with
    latency that is mostly queueing. Then, per rate in --tracker-rates, fresh
    connections send --tracker-batch requests at a time on a fixed schedule
    (open loop) for --tracker-rate-secs: latency at that offered load, timed
    from the schedule. Tracker RSS. The load generator (one thread) shares
    the 2 cores with the tracker."""
    a = ctx.args
    if a.quick:
        peers, files, conns, secs, rates, rate_secs = 200, 2000, 50, 2, [2000], 1
    else:
        peers, files, conns, secs = a.tracker_peers, a.tracker_files, a.tracker_conns, a.tracker_secs
        rates = [int(x) for x in a.tracker_rates.split(",") if x.strip()]
        rate_secs = a.tracker_rate_secs
    load = os.path.join(H.REPO, "target", "release", "trackerload")
    rec = {k: [] for k in ("rps", "p50_ms", "p99_ms", "max_ms", "rss_mib", "hwm_mib",
                           "fill_secs")}
    open_keys = ("answered_rps", "p50_ms", "p99_ms", "max_ms", "service_p50_ms", "service_p99_ms")
    open_rec = {rate: {k: [] for k in open_keys} for rate in rates}
    # Per rate and run: the worst latency of each 100 ms of the phase, to
    # tell one stall from a tail spread over the run.
    timelines = {rate: [] for rate in rates}
    errors = []
    for i in range(ctx.runs):
        root = ctx.fresh_dir("tracker")
        tracker = H.start_tracker(root, env=ctx.env)
        try:
            out = subprocess.run([load, "--join", tracker.join, "--peers", str(peers),
                                  "--files", str(files), "--conns", str(conns),
                                  "--depth", str(a.tracker_depth), "--secs", str(secs),
                                  "--batch", str(a.tracker_batch)]
                                 + (["--rates", ",".join(map(str, rates)),
                                     "--rate-secs", str(rate_secs)] if rates else []),
                                 capture_output=True, text=True, env=ctx.env, timeout=1800)
            if out.returncode != 0:
                raise RuntimeError(f"trackerload failed: {out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            mem = tracker.mem()
        finally:
            H.stop_all([tracker])
            shutil.rmtree(root, ignore_errors=True)
        for k in ("rps", "p50_ms", "p99_ms", "max_ms", "fill_secs"):
            rec[k].append(r[k])
        rec["rss_mib"].append(mem["VmRSS"] / H.MiB)
        rec["hwm_mib"].append(mem["VmHWM"] / H.MiB)
        errors.append(r["errors"] + sum(o["errors"] + o["unanswered"] for o in r["open"]))
        for o in r["open"]:
            for k in open_keys:
                open_rec[o["rate"]][k].append(o[k])
            timelines[o["rate"]].append(o.get("timeline_max_ms", []))
            H.log(f"  open loop at {o['rate']:.0f} req/s: answered {o['answered_rps']:.0f}/s, "
                  f"p50 {o['p50_ms']:.2f} ms, p99 {o['p99_ms']:.2f} ms from the schedule "
                  f"(p99 {o['service_p99_ms']:.2f} ms from the write), "
                  f"{o['errors']} errors, {o['unanswered']} unanswered")
        H.log(f"tracker run {i + 1}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
              f"p99 {r['p99_ms']:.2f} ms, tracker RSS {mem['VmRSS'] / H.MiB:.0f} MiB, "
              f"{r['errors']} errors, fill {r['fill_secs']:.1f} s")
    res = {k: H.summary(v) for k, v in rec.items()}
    res.update({"peers": peers, "files": files, "conns": conns, "secs": secs,
                "depth": a.tracker_depth, "errors": errors, "rate_secs": rate_secs,
                "open": [dict({k: H.summary(v) for k, v in open_rec[rate].items()}, rate=rate,
                              batch=a.tracker_batch, timeline_max_ms=timelines[rate])
                         for rate in rates]})
    return res


# ---------------------------------------------------------------- report

def page_reporting():
    """Whether a virtio balloon reports freed guest memory to the host (its
    feature bit 5, VIRTIO_BALLOON_F_REPORTING). Where it does, free memory
    is handed back to the host, and the next first touch of it costs the
    host a page fault. On such a VM, writing 1 GiB into the page cache took
    0.39-0.46 s right after 1 GiB was freed and 0.78-1.11 s after a pause
    of 5-10 s (BENCHMARKS.md, "Machine")."""
    for dev in glob.glob("/sys/bus/virtio/devices/*"):
        try:
            with open(os.path.join(dev, "device")) as f:
                if f.read().strip() != "0x0005":
                    continue
            with open(os.path.join(dev, "features")) as f:
                bits = f.read().strip()
        except OSError:
            continue
        return "on" if len(bits) > 5 and bits[5] == "1" else "off"
    return "no balloon device"


def machine_info(ctx):
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""
    model = sh("lscpu | sed -n 's/^Model name: *//p'")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "glibc": " ".join(platform.libc_ver()),
        "memory": sh("free -h | awk '/^Mem:/{print $2}'"),
        "free_page_reporting": page_reporting(),
        "tcp_congestion_control": sh("cat /proc/sys/net/ipv4/tcp_congestion_control"),
        "disk": sh(f"df -hT {ctx.work} | awk 'NR==2{{print $1\" \"$2\", \"$3\" total, \"$5\" free\"}}'"),
        "rotational": sh(f"d=$(basename $(df --output=source {ctx.work} | tail -1)); "
                         "p=$(lsblk -no pkname /dev/$d 2>/dev/null); "
                         "cat /sys/block/${p:-$d}/queue/rotational 2>/dev/null"),
        "GLIBC_TUNABLES": ctx.env.get("GLIBC_TUNABLES", "(not set)"),
        "rustc": sh("rustc --version"),
        "aria2c": sh("aria2c --version 2>/dev/null | head -1") or "(not installed)",
        "page_cache": "dropped before each measurement" if ctx.args.drop_caches else
                      "warm: source in the page cache, dirty pages flushed before each measurement",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "load_before": sh("cat /proc/loadavg"),
        "commit": sh(f"git -C {H.REPO} rev-parse --short HEAD"),
        "worktree": "dirty (uncommitted changes in crates/)" if sh(
            f"git -C {H.REPO} status --porcelain --untracked-files=no -- crates") else "clean",
    }


def mib_s(size, secs):
    return size / H.MiB / secs


def table(results):
    """Markdown results table: figure, median (min–max), goal, met."""
    rows = []

    def row(bench, what, val, goal="", met=""):
        rows.append(f"| {bench} | {what} | {val} | {goal} | {met} |")

    def met(s, ok):
        if s.get("median") is None:
            return "n/a"
        return "yes" if ok(s["median"]) else "**no**"

    fs = H.fmt_s
    r = results.get("single")
    if r:
        for label, x in r.items():
            b = f"1. single source, {label}"
            size = x["size"]
            names = {"p2pfs": "p2pfs (encrypted, AES-GCM)",
                     "p2pfs_chacha": "p2pfs (encrypted, ChaCha20-Poly1305)",
                     "p2pfs_plain": "p2pfs --insecure (plain)",
                     "p2pfs_pin": "pinned: p2pfs (encrypted, AES-GCM)",
                     "p2pfs_plain_pin": "pinned: p2pfs --insecure (plain)",
                     "tcpcopy_pin": "pinned: tcpcopy",
                     "aria2": "BitTorrent: aria2c from an aria2c seeder (start to exit)",
                     "pyref": "the Python implementation (`--pyref`)"}
            for k in ("p2pfs", "p2pfs_chacha", "p2pfs_plain", "tcpcopy", "socat", "cp",
                      "aria2", "pyref", "p2pfs_pin", "p2pfs_plain_pin", "tcpcopy_pin"):
                if x.get(k, {}).get("n"):
                    thr = H.summary([mib_s(size, v) for v in x[k]["values"]])
                    row(b, f"{names.get(k, k)} time, s (MiB/s)",
                        f"{fs(x[k])} ({thr['median']:.0f})")
            row(b, "p2pfs `elapsed_secs` from the API, s", fs(x["p2pfs_api"]))
            if x.get("ratio_tcp_plain", {}).get("n"):
                row(b, "**p2pfs --insecure / raw TCP (tcpcopy) throughput**",
                    fs(x["ratio_tcp_plain"]), "≥ 0.9",
                    met(x["ratio_tcp_plain"], lambda v: v >= 0.9))
            row(b, "**p2pfs encrypted / raw TCP (tcpcopy) throughput**", fs(x["ratio_tcp"]),
                "≥ 0.8", met(x["ratio_tcp"], lambda v: v >= 0.8))
            if x.get("enc_throughput", {}).get("n"):
                row(b, "**encrypted (AES-GCM) / plain throughput**", fs(x["enc_throughput"]),
                    "≥ 0.75", met(x["enc_throughput"], lambda v: v >= 0.75))
                row(b, "encrypted (ChaCha20-Poly1305) / plain throughput",
                    fs(x["chacha_throughput"]))
            if x.get("ratio_tcp_pin", {}).get("n"):
                pb = f"{b}, pinned (sender on one CPU, receiver on the other)"
                row(pb, "p2pfs --insecure / tcpcopy throughput, both pinned",
                    fs(x["ratio_tcp_plain_pin"]))
                row(pb, "p2pfs encrypted / tcpcopy throughput, both pinned",
                    fs(x["ratio_tcp_pin"]))
                row(pb, "encrypted (AES-GCM) / plain throughput, both pinned",
                    fs(x["enc_throughput_pin"]))
            if x["ratio_socat"]["n"]:
                row(b, "p2pfs / socat throughput", fs(x["ratio_socat"]))
            if x.get("ratio_aria2", {}).get("n"):
                row(b, "BitTorrent (aria2c): first piece to last, from its log, s",
                    fs(x["aria2_transfer"]))
                row(b, "p2pfs encrypted / BitTorrent (aria2c) throughput, start to exit",
                    fs(x["ratio_aria2"]))
                row(b, "p2pfs --insecure / BitTorrent (aria2c) throughput, start to exit",
                    fs(x["ratio_aria2_plain"]))
                row(b, "p2pfs encrypted (whole fetch) / aria2c's pieces alone (first to "
                    "last)", fs(x["ratio_aria2_transfer"]))
            if x.get("ratio_pyref", {}).get("n"):
                row(b, "p2pfs encrypted / the Python implementation throughput",
                    fs(x["ratio_pyref"]))
                row(b, "p2pfs --insecure / the Python implementation throughput",
                    fs(x["ratio_pyref_plain"]))
            row(b, "p2pfs / cp throughput", fs(x["ratio_cp"]))
            if x.get("cpu_tcp_recv", {}).get("n"):
                # CPU seconds of the receiving and sending processes (all
                # threads, from /proc or wait4): on 2 shared cores their sum
                # over 2 bounds how fast each method can be.
                for what, rk, sk in (("p2pfs (encrypted, AES-GCM)", "cpu_dl", "cpu_seed"),
                                     ("p2pfs --insecure (plain)", "cpu_dl_plain",
                                      "cpu_seed_plain"),
                                     ("tcpcopy", "cpu_tcp_recv", "cpu_tcp_send")):
                    if x.get(rk, {}).get("n"):
                        row(b, f"{what}: CPU-s of the receiver / the sender",
                            f"{fs(x[rk])} / {fs(x[sk])}")
            mb = {k: H.summary([v / H.MiB for v in x[k]["values"]]) for k in ("hwm_dl", "hwm_seed")}
            row(f"5. memory, {label}", "downloader peak RSS (VmHWM), MiB", fs(mb["hwm_dl"]),
                "≤ 32", met(mb["hwm_dl"], lambda v: v <= 32))
            row(f"5. memory, {label}", "seeder peak RSS (VmHWM, includes publish), MiB",
                fs(mb["hwm_seed"]), "≤ 32", met(mb["hwm_seed"], lambda v: v <= 32))
    r = results.get("multi")
    if r:
        b = f"2. multi source, {size_label(r['size'])}"
        row(b, "4 seeders, time s", fs(r["multi"]))
        row(b, "1 seeder (same run), time s", fs(r["single"]))
        row(b, "**4-source / 1-source time**", fs(r["ratio"]), "≤ 1.0",
            met(r["ratio"], lambda v: v <= 1.0))
        row(b, "busiest seeder's upload / even share", fs(r["max_share"]), "≤ 2",
            met(r["max_share"], lambda v: v <= 2))
        row(b, "idlest seeder's upload / even share", fs(r["min_share"]), "≥ 0.5",
            met(r["min_share"], lambda v: v >= 0.5))
    r = results.get("publish")
    if r:
        b = f"4. publish, {size_label(r['size'])}"
        row(b, "publish → listed at tracker, s", fs(r["publish"]))
        row(b, "b3sum, s", fs(r["b3sum"]))
        row(b, "**publish / b3sum**", fs(r["ratio"]), "≤ 1.3", met(r["ratio"], lambda v: v <= 1.3))
        rp = H.summary([v * 1000 for v in r["republish"]["values"]])
        row(b, "re-publish unchanged file: new process on the same repo → listed, ms", fs(rp), "< 50",
            met(rp, lambda v: v < 50))
    r = results.get("many")
    if r:
        sec = {"plain": ", --insecure"}.get(r.get("security", "aes-gcm"), "")
        b = (f"7. many downloaders ({r['downloaders']} × {size_label(r['size'])}, "
             f"files on {r.get('medium', 'disk')}{sec})")
        row(b, "all done, s", fs(r["total"]))
        row(b, "median downloader done, s", fs(r["median_dl"]))
        row(b, f"one downloader alone (median of {r.get('singles', 1)} in a row, same seeder, "
            "same run), s", fs(r["single"]))
        row(b, f"**total / ({r['downloaders']} × single)**", fs(r["ratio"]), "≤ 1.0",
            met(r["ratio"], lambda v: v <= 1.0))
        if r.get("cpu_crowd", {}).get("n"):
            row(b, "CPU-s of every p2pfs process per GiB delivered: one downloader alone",
                fs(r["cpu_single"]))
            row(b, "CPU-s per GiB delivered: the crowd (downloaders, seeder, tracker)",
                fs(r["cpu_crowd"]))
            row(b, "chunk bytes sent by every peer / bytes delivered (ideal 1)",
                fs(r["sent"]))
            row(b, "CPU-s of the seeder / of the tracker over the whole crowd",
                f"{fs(r['cpu_crowd_seed'])} / {fs(r['cpu_crowd_tracker'])}")
        if r.get("floor", {}).get("n"):
            row(b, f"writing {r['downloaders']} × {size_label(r['size'])} of zeros there alone "
                "(2 × `dd`, right after), s", fs(r["floor"]))
            row(b, "total / that write alone", fs(r["vs_floor"]))
        if r.get("bt_total", {}).get("n"):
            row(b, "BitTorrent (aria2c), the same crowd right after: all done, s",
                fs(r["bt_total"]))
            row(b, "BitTorrent (aria2c): median downloader done, s", fs(r["bt_median"]))
            row(b, "aria2c's all done / p2pfs's all done (p2pfs's speed-up)", fs(r["vs_bt"]))
        if r.get("bt_failed"):
            row(b, "BitTorrent repetitions that failed (left out)", "; ".join(r["bt_failed"]))
        mb = H.summary([v / H.MiB for v in r["hwm_seed"]["values"]])
        row(b, "seeder peak RSS, MiB", fs(mb))
        mb = H.summary([v / H.MiB for v in r["hwm_dl_max"]["values"]])
        row(b, "largest downloader peak RSS, MiB", fs(mb))
        if r.get("failed"):
            row(b, "repetitions that failed (left out of the figures)",
                "; ".join(r["failed"]))
    r = results.get("swarm")
    if r and "skipped" not in r:
        for n in [k for k in r if k.isdigit()]:
            x = r[n]
            b = f"3. swarm N={n}, {size_label(r['size'])}, {r['rate_mbit']} Mbit/s up"
            row(b, "bound D, s (client-server N·F/u_s, s)",
                f"{x['D']:.1f} ({x['client_server']:.1f})")
            row(b, "median leecher done, s", fs(x["median"]))
            row(b, "last leecher done, s", fs(x["last"]))
            row(b, "**median / D**", fs(x["ratio_median"]), "≤ 1.05",
                met(x["ratio_median"], lambda v: v <= 1.05))
            row(b, "**last / D**", fs(x["ratio_last"]), "≤ 1.15",
                met(x["ratio_last"], lambda v: v <= 1.15))
            if "D_tcp" in x:
                r_tcp = H.summary([v / x["D_tcp"] for v in x["median"]["values"]])
                row(b, f"median / D_tcp (D with TCP/IP/Ethernet headers, {x['D_tcp']:.1f} s)",
                    fs(r_tcp))
            if "seed_up" in x:
                row(b, "seeder uploaded, file sizes (ideal 1)", fs(x["seed_up"]))
            if x.get("bt_median", {}).get("n"):
                row(b, "BitTorrent (aria2c), same hosts: median leecher done, s",
                    fs(x["bt_median"]))
                row(b, "BitTorrent (aria2c): last leecher done, s", fs(x["bt_last"]))
                row(b, "BitTorrent (aria2c): median / D", fs(x["bt_ratio_median"]))
                row(b, "BitTorrent (aria2c): last / D", fs(x["bt_ratio_last"]))
            if x.get("bt_failed"):
                row(b, "BitTorrent repetitions that failed (left out)", "; ".join(x["bt_failed"]))
    elif r:
        row("3. swarm", "skipped", r["skipped"])
    r = results.get("tracker")
    if r and "skipped" in r:
        row("6. tracker under load", "not measured", r["skipped"], "≥ 200,000 req/s, p99 < 5 ms")
    elif r:
        b = (f"6. tracker, {r['peers']:,} peers, {r['files']:,} files, "
             f"{r['conns']:,} connections × {r['depth']} in flight")
        row(b, "**requests/s** (file location + chunk register)", fs(r["rps"]), "≥ 200,000",
            met(r["rps"], lambda v: v >= 200_000))
        row(b, "p50 latency, ms", fs(r["p50_ms"]))
        row(b, "p99 latency, ms (queueing: conns × depth requests always out)", fs(r["p99_ms"]))
        for o in r.get("open", []):
            per = ("one request" if o.get("batch", 1) == 1
                   else f"{o['batch']} requests")
            ob = (f"6. tracker, open loop: {r['conns']:,} connections, {per} at a time, "
                  f"{o['rate']:,} req/s offered")
            row(ob, "answered/s", fs(o["answered_rps"]))
            row(ob, "p50 latency from the schedule, ms", fs(o["p50_ms"]))
            ok = met(o["p99_ms"], lambda v: v < 5)
            if o["rate"] < 200_000:
                ok = "(the goal is at 200,000 req/s)"
            row(ob, "**p99 latency from the schedule, ms**", fs(o["p99_ms"]),
                "< 5 at 200,000 req/s", ok)
            row(ob, "p99 latency from the write, ms", fs(o["service_p99_ms"]))
            row(ob, "max latency from the schedule, ms", fs(o["max_ms"]))
        row(b, "tracker RSS at the end / peak, MiB", f"{fs(r['rss_mib'])} / {fs(r['hwm_mib'])}")
        row(b, "fill time (connect, register, publish), s", fs(r["fill_secs"]))
    head = ["| benchmark | figure | median (min–max) | goal | met |",
            "|---|---|---|---|---|"]
    return "\n".join(head + rows)


def update_doc(path, block):
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    if not os.path.exists(path):
        return False
    text = open(path).read()
    if begin not in text or end not in text:
        return False
    a = text.index(begin) + len(begin)
    b = text.index(end)
    open(path, "w").write(text[:a] + "\n" + block + "\n" + text[b:])
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes, one repetition: checks that every benchmark runs")
    ap.add_argument("--only", default=",".join(BENCHES),
                    help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--runs", type=int, default=None, help="repetitions (default 5; quick 1)")
    ap.add_argument("--workdir", default="/tmp", help="where the temporary files go")
    ap.add_argument("--drop-caches", action="store_true",
                    help="drop the page cache before every measurement (root)")
    ap.add_argument("--tunables", action="store_true",
                    help="run everything with GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold"
                         "=2097152 (the memcpy alignment trap of CRATES.md)")
    ap.add_argument("--many", type=int, default=200,
                    help="downloaders for benchmark 7 (one peer process each)")
    ap.add_argument("--many-security", default="aes-gcm",
                    choices=["aes-gcm", "chacha-poly", "plain"],
                    help="benchmark 7's connections (plain: --insecure, as BitTorrent's)")
    ap.add_argument("--many-disk", action="store_true",
                    help="benchmark 7: downloads to the workdir's disk, not to a tmpfs")
    ap.add_argument("--many-timeout", type=float, default=300,
                    help="give up on a benchmark 7 repetition after this many seconds")
    ap.add_argument("--single-mib", default="1024,5120",
                    help="file sizes in MiB for benchmark 1 (quick: 32)")
    ap.add_argument("--pyref", metavar="DIR", default=None,
                    help="benchmark 1: also time the Python implementation of the course "
                         "design whose p2pfs package is in DIR (see BENCHMARKS.md)")
    ap.add_argument("--pyref-python", metavar="PYTHON", default=sys.executable,
                    help="the interpreter for --pyref, with its dependencies installed")
    ap.add_argument("--swarm-n", default="8,16,32", help="leecher counts for benchmark 3")
    ap.add_argument("--swarm-rate", type=int, default=20, help="upload Mbit/s per host")
    ap.add_argument("--tracker-peers", type=int, default=10_000)
    ap.add_argument("--tracker-files", type=int, default=100_000)
    ap.add_argument("--tracker-conns", type=int, default=1_000)
    ap.add_argument("--tracker-depth", type=int, default=4, help="requests in flight per connection")
    ap.add_argument("--tracker-secs", type=float, default=10)
    ap.add_argument("--tracker-batch", type=int, default=4,
                    help="open loop: requests per write (a peer's updates sent together)")
    ap.add_argument("--tracker-rates", default="50000,100000,150000,200000",
                    help="open-loop offered loads, requests/s, comma-separated ('' for none)")
    ap.add_argument("--tracker-rate-secs", type=float, default=5)
    ap.add_argument("--results", default=None,
                    help="results folder (default bench/results, quick: a temp folder)")
    ap.add_argument("--no-build", action="store_true", help="skip cargo build --release")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite BENCHMARKS.md")
    ap.add_argument("--merge", metavar="RESULTS_JSON", default=None,
                    help="take the benchmarks not selected by --only from this earlier "
                         "results.json (its run is named in BENCHMARKS.md)")
    args = ap.parse_args()
    args.runs = args.runs or (1 if args.quick else 5)
    args.swarm_n = [int(x) for x in args.swarm_n.split(",")]
    selected = [b for b in args.only.split(",") if b]
    for b in selected:
        if b not in BENCHES:
            ap.error(f"unknown benchmark {b}")

    if not args.no_build:
        H.log("cargo build --release -p p2pfs -p p2pfs-bench")
        H.run(["cargo", "build", "--release", "-p", "p2pfs", "-p", "p2pfs-bench"], cwd=H.REPO)
    work = tempfile.mkdtemp(prefix="p2pfs-bench-", dir=args.workdir)
    H.CLEANUP.add(lambda: shutil.rmtree(work, ignore_errors=True))
    ctx = Ctx(args, work)
    ctx.pyref = None
    if args.pyref and "single" in selected:
        try:
            ctx.pyref = pyref.Reference(args.pyref, args.pyref_python, ctx.logdir)
        except RuntimeError as e:
            ap.error(str(e))
    results_dir = args.results or (os.path.join(work, "results") if args.quick else
                                   os.path.join(H.REPO, "bench", "results"))
    os.makedirs(results_dir, exist_ok=True)
    info = machine_info(ctx)
    H.log(f"machine: {info}")
    results = {"machine": info, "args": vars(args)}
    fns = {"single": bench_single, "multi": bench_multi, "publish": bench_publish,
           "many": bench_many, "swarm": bench_swarm, "tracker": bench_tracker}
    failed = []
    for b in BENCHES:
        if b not in selected:
            continue
        H.log(f"== {b}")
        t0 = time.monotonic()
        try:
            results[b] = fns[b](ctx)
        except Exception as e:  # noqa: BLE001 - report, go on with the others
            H.log(f"{b} FAILED: {e!r}")
            failed.append(b)
            results[b + "_error"] = repr(e)
        H.log(f"== {b} took {time.monotonic() - t0:.0f} s")
        H.CLEANUP.kill_procs()
    # Which run measured each benchmark (kept through --merge).
    run_of = {"date": info["date"], "commit": info["commit"], "worktree": info["worktree"]}
    results["runs"] = {b: run_of for b in selected if b in results}
    merged = []
    if args.merge:
        with open(args.merge) as f:
            prior = json.load(f)
        for b in BENCHES:
            # Kept: benchmarks not run now, and those that failed now.
            if b not in results and b in prior:
                results[b] = prior[b]
                results["runs"][b] = prior.get("runs", {}).get(b) or {
                    k: prior["machine"][k] for k in ("date", "commit", "worktree")}
                merged.append(b)
    md = table(results)
    with open(os.path.join(results_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(results_dir, "results.md"), "w") as f:
        f.write(md + "\n")
    if "swarm" in results and "skipped" not in results["swarm"]:
        svgplot.swarm_plot(results["swarm"], os.path.join(results_dir, "swarm.svg"))
    print(md)
    if not args.quick and not args.no_doc and not failed:
        block = (f"Run of {info['date']} (`python3 bench/run.py "
                 f"{' '.join(sys.argv[1:])}`) on commit {info['commit']} "
                 f"(work tree {info['worktree']})")
        runs = {}
        for m in merged:
            r = results["runs"][m]
            runs.setdefault((r["date"], r["commit"], r["worktree"]), []).append(m)
        for (date, commit, tree), names in sorted(runs.items(), reverse=True):
            block += (f"; {', '.join(names)} from the run of {date} on commit "
                      f"{commit} (work tree {tree})")
        block += ".\n\n" + md
        if update_doc(os.path.join(H.REPO, "BENCHMARKS.md"), block):
            H.log("BENCHMARKS.md results section updated")
    H.log(f"results in {results_dir}")
    if failed:
        H.log(f"FAILED: {failed}")
        sys.exit(1)


if __name__ == "__main__":
    main()
