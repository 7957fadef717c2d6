#!/usr/bin/env python3
"""Profiles one single-source loopback fetch with `perf record` (software
cpu-clock event: this VM has no hardware counters) on the seeder and the
downloader, then prints `perf report` summaries for each.

    python3 bench/profile_fetch.py [--size-mib 1024] [--out DIR]

Needs `perf` (Debian: linux-perf) and a release build (run bench/run.py
first, or `cargo build --release`). Python 3 standard library only.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as H  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--out", default=None, help="keep perf.data files here")
    ap.add_argument("--insecure", action="store_true", help="plain transport (no encryption)")
    args = ap.parse_args()
    if not shutil.which("perf"):
        sys.exit("perf not found (apt-get install linux-perf)")
    work = tempfile.mkdtemp(prefix="p2pfs-prof-", dir="/tmp")
    H.CLEANUP.add(lambda: shutil.rmtree(work, ignore_errors=True))
    out = args.out or work
    os.makedirs(out, exist_ok=True)
    size = args.size_mib * H.MiB
    src = os.path.join(work, "src")
    H.make_random_file(src, size)
    tracker = H.start_tracker(work, insecure=args.insecure)
    seed = H.start_peer(work, "seed", tracker, os.path.join(work, "seed"))
    dl = H.start_peer(work, "dl", tracker, os.path.join(work, "dl"))
    H.publish(seed, src, "f")
    H.wait_listed(tracker, "f")
    H.sync()
    H.warm(src)
    perfs = {}
    for tag, d in (("seeder", seed), ("downloader", dl)):
        data = os.path.join(out, f"perf-{tag}.data")
        perfs[tag] = (H.spawn(["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g",
                               "-p", str(d.pid), "-o", data], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL), data)
    import time
    time.sleep(0.5)
    wall, end = H.timed_fetch(dl, "f", os.path.join(work, "dst"))
    H.log(f"fetch {wall:.3f} s under perf (api elapsed {end['elapsed_secs']:.3f} s)")
    for p, _ in perfs.values():
        p.send_signal(signal.SIGINT)
        p.wait()
    H.stop_all([seed, dl, tracker])
    for tag, (_, data) in perfs.items():
        print(f"===== {tag}: top symbols (self)")
        r = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                            "--sort", "sym", "-g", "none", "--percent-limit", "1.5"],
                           capture_output=True, text=True)
        print("\n".join(line for line in r.stdout.splitlines()
                        if line and not line.startswith("#")))
        print(f"===== {tag}: by thread (comm)")
        r = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                            "--sort", "comm", "-g", "none"], capture_output=True, text=True)
        print("\n".join(line for line in r.stdout.splitlines()
                        if line and not line.startswith("#")))


if __name__ == "__main__":
    main()
