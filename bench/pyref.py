"""The Python implementation of the course design as a reference for
benchmark 1 (`run.py --pyref DIR`).

The issue that set the goals quotes "the original Python implementation"
(about 3.5 s for 1 GiB on its machine). The one used here is a public
Python 3 implementation of the same design (tracker, peers, chunks, rarest
first; asyncio with uvloop, msgpack messages, 512 KiB chunks, each checked
against a SHA-256 digest the sender attaches). It is not part of this
repository: pass a checkout of it (the folder that holds `p2pfs/core/peer.py`)
and an interpreter that has its dependencies (`--pyref-python`; see
BENCHMARKS.md, "How to run").

Each repetition starts a fresh tracker, a fresh seeder that publishes the
file, and a fresh downloader, each its own process, as p2pfs's benchmark 1
does. The time is that of the downloader's `download` call: from asking the
tracker for the file list to the whole file renamed into place, the same
span as a p2pfs fetch from its request to its end.

This file is also the driver that runs in those processes:
`python pyref.py tracker | seed TRACKER_PORT FILE | get TRACKER_PORT NAME DEST`.
"""

import os
import subprocess
import sys
import threading
import time

DRIVER = os.path.abspath(__file__)
# Its install_requires.
MODULES = ("aioconsole", "beautifultable", "coloredlogs", "msgpack", "tqdm", "uvloop")


class Reference:
    """The Python implementation in `checkout`, run by `python`."""

    def __init__(self, checkout, python, logdir):
        import harness as H  # the driver processes do not need it
        self.H = H
        self.checkout = os.path.abspath(checkout)
        if not os.path.isfile(os.path.join(self.checkout, "p2pfs", "core", "peer.py")):
            raise RuntimeError(f"--pyref {checkout}: no p2pfs/core/peer.py there; pass the "
                               "folder that holds the Python implementation's p2pfs package")
        self.python = python
        self.logdir = logdir
        self.env = dict(os.environ, PYTHONPATH=self.checkout, PYTHONUNBUFFERED="1")
        check = subprocess.run([python, "-c", "import " + ", ".join(MODULES)], env=self.env,
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"--pyref-python {python} lacks the Python implementation's "
                               f"dependencies ({', '.join(MODULES)}): "
                               f"{(check.stderr.strip().splitlines() or ['?'])[-1]}")

    def _start(self, args, log, ok, timeout=60):
        """Starts a driver process; returns it and its first stdout line,
        which `ok` must accept."""
        p = self.H.spawn([self.python, DRIVER, *args], stderr=log, env=self.env)
        got = []
        reader = threading.Thread(target=lambda: got.append(p.stdout.readline().strip()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        line = got[0] if got else None
        if line is None or not ok(line):
            self.H.CLEANUP.kill_procs([p])
            raise RuntimeError(f"Python reference {args[0]}: said {line!r} in {timeout} s; "
                               "see pyref.log")
        return p, line

    def fetch(self, src, dst, timeout=600):
        """One download of `src` into `dst` by fresh processes. Returns the
        seconds of the download call."""
        self.H.remove(dst + ".temp")  # where it writes before the rename
        with open(os.path.join(self.logdir, "pyref.log"), "a") as log:
            procs = []
            try:
                tracker, port = self._start(["tracker"], log, str.isdigit)
                procs.append(tracker)
                seeder, _ = self._start(["seed", port, src], log, lambda s: s == "ready")
                procs.append(seeder)
                r = subprocess.run([self.python, DRIVER, "get", port, os.path.basename(src),
                                    dst], env=self.env, stdout=subprocess.PIPE, stderr=log,
                                   text=True, timeout=timeout)
                out = r.stdout.strip().splitlines()
                if r.returncode != 0 or not out:
                    raise RuntimeError(f"Python reference download failed (exit "
                                       f"{r.returncode}); see pyref.log")
                secs = float(out[-1])
            finally:
                self.H.CLEANUP.kill_procs(procs)
        if os.path.getsize(dst) != os.path.getsize(src):
            raise RuntimeError("Python reference: destination has the wrong size")
        return secs


def _drive(argv):
    """The driver: one tracker, seeder or downloader of the Python
    implementation, through its core API."""
    import asyncio
    import functools

    # Written for Python 3.6-3.7, it passes `loop=` to asyncio calls that
    # dropped that argument in 3.10; accept and ignore it.
    def without_loop(f):
        @functools.wraps(f)
        async def call(*a, loop=None, **k):
            return await f(*a, **k)
        return call

    asyncio.open_connection = without_loop(asyncio.open_connection)
    asyncio.start_server = without_loop(asyncio.start_server)
    import uvloop
    from p2pfs.core.peer import Peer
    from p2pfs.core.tracker import Tracker

    async def main():
        role = argv[0]
        if role == "tracker":
            tracker = Tracker()
            await tracker.start(("127.0.0.1", 0))
            print(tracker.address()[1], flush=True)
            await asyncio.Event().wait()
        peer = Peer()
        await peer.start(("127.0.0.1", 0))
        await peer.connect(("127.0.0.1", int(argv[1])))
        if role == "seed":
            await peer.publish(argv[2])
            print("ready", flush=True)
            await asyncio.Event().wait()
        t0 = time.monotonic()
        await peer.download(argv[2], argv[3])
        print(f"{time.monotonic() - t0:.4f}", flush=True)
        await peer.stop()

    uvloop.install()
    asyncio.run(main())


if __name__ == "__main__":
    _drive(sys.argv[1:])
