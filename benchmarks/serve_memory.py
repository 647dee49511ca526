"""Peak memory of a `same-fast serve` process with N large frames in flight at once.

    python benchmarks/serve_memory.py -m fundus-lite --side 4000 --frames 4

Starts the server as a child process, sends each frame (a resized real fundus photograph, PNG)
on its own WebSocket at the same time, waits for every reply, and prints the server's peak
resident memory (VmHWM from /proc, Linux) and the wall time. Extra arguments go to the server.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image


def frame_png(side: int) -> bytes:
    from skimage import data

    img = Image.fromarray(data.retina()).resize((side, side))
    b = io.BytesIO()
    img.save(b, format="PNG", compress_level=1)
    return b.getvalue()


def peak_gb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
    return int(m.group(1)) / 1e6 if m else float("nan")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", default="fundus-lite")
    p.add_argument("--side", type=int, default=4000)
    p.add_argument("--frames", type=int, default=4)
    args, extra = p.parse_known_args(argv)
    from websockets.sync.client import connect

    data = frame_png(args.side)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, "-m", "same_fast.cli", "serve", "-m", args.model,
                             "--stream", "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        m = re.search(r"http://127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert m, proc.stderr.read() if proc.poll() is not None else "no address"
        url = f"ws://127.0.0.1:{m.group(1)}/v1/stream"
        idle = peak_gb(proc.pid)
        shapes: list = []

        def one() -> None:
            with connect(url, max_size=None) as ws:
                ws.send(data)
                while isinstance(reply := ws.recv(timeout=1200), str):
                    pass
                shapes.append(np.asarray(Image.open(io.BytesIO(reply))).shape)

        t0 = time.monotonic()
        threads = [threading.Thread(target=one) for _ in range(args.frames)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out = {"model": args.model, "side": args.side, "frames": args.frames,
               "png_bytes": len(data), "replies": len(shapes),
               "idle_peak_gb": round(idle, 3), "peak_gb": round(peak_gb(proc.pid), 3),
               "seconds": round(time.monotonic() - t0, 1), "server_args": extra}
        print(out, flush=True)
        return out
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
