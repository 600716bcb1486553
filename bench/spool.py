"""``python -m bench spool``: the parent's peak memory for 20 downloads of 8 MB at once, bodies
held in memory or spooled to disk (``download_stage(spool_above=...)``), each run a fresh
process (the client of ``tests/test_spool.py``): download -> resize (2 worker processes) ->
write, from a loopback server. Spooled, the parent holds a body only while it is sent to a
worker: 2 lanes x 2 batches in flight, one body each (batches capped at 8 MiB).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
BODIES, BODY_BYTES = 20, 8 * 2**20

#: The run measured: a fresh process, peak RSS from after the engine's start-up (also
#: ``tests/test_spool.py``'s).
CLIENT = """
import json, sys
from pipeline import Pipeline
from stages import download_stage, resize_stage, write_stage


def kb(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


if __name__ == "__main__":
    base, out, n, spool = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    download = download_stage(
        workers=n, limit_per_host=n, allow_private_hosts=True,
        spool_above=None if spool == "off" else 4 * 2**20,
    )
    pipe = Pipeline([download, resize_stage(64, workers=2), write_stage(out)])
    Pipeline([resize_stage(64, workers=2)]).run([], progress=False)  # engine imports, forkserver
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # peak RSS from here on
    before = kb("VmRSS")
    result = pipe.run([f"{base}/body/{i}" for i in range(n)], output=out, progress=False)
    print(json.dumps({"ok": result.ok, "peak_mb": (kb("VmHWM") - before) / 1024}))
"""


def body(size: int = BODY_BYTES) -> bytes:
    """A small JPEG and zeros after its end: ``size`` bytes that decode quickly."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 90)).save(buf, "JPEG")
    return buf.getvalue() + b"\0" * (size - buf.tell())


@contextmanager
def _server() -> Iterator[str]:
    payload = body()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=payload, content_type="image/jpeg")

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/body/{n}", handler)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


def _peak_mb(base: str, spool: str) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as tmp:
        script = Path(tmp) / "client.py"
        script.write_text(CLIENT)
        env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": tmp}
        done = subprocess.run(
            [sys.executable, str(script), base, str(Path(tmp) / "out"), str(BODIES), spool],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=True,
        )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    if seen["ok"] != BODIES:
        raise RuntimeError(f"{seen['ok']} of {BODIES} bodies processed: {done.stderr[-2000:]}")
    return float(seen["peak_mb"])


def main(*, quick: bool = False) -> str:
    if not os.path.exists("/proc/self/clear_refs"):
        return "## Spooled downloads\n\nskipped: needs Linux /proc (clear_refs, VmHWM)\n"
    rounds = 2 if quick else 5
    peaks: dict[str, list[float]] = {"off": [], "on": []}
    with _server() as base:
        for _ in range(rounds):  # alternating, so both see the same machine
            for spool in ("off", "on"):
                peaks[spool].append(_peak_mb(base, spool))
    lines = [
        f"## Spooled downloads: the parent's peak RSS, {BODIES} bodies of 8 MB at once",
        "",
        "| bodies | median MB | min | max | runs |",
        "|---|---:|---:|---:|---:|",
    ]
    for spool, label in (("off", "held in memory"), ("on", "spooled (default, over 4 MiB)")):
        got = peaks[spool]
        lines.append(
            f"| {label} | {statistics.median(got):.0f} | {min(got):.0f} | {max(got):.0f} "
            f"| {len(got)} |"
        )
    return "\n".join(lines) + "\n"
