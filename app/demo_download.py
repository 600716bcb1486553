"""``make demo-download``: see the download path work with no internet.

Serves ``sample_data/images`` over HTTP on 127.0.0.1 (a port the kernel picks), writes a URL
list for it, and runs ``process --urls`` against it with ``--allow-private-hosts`` (loopback is
refused by default). Run: ``python -m app.demo_download [OUTPUT]``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

from .cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "sample_data" / "images"


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1:<free port> from a background thread; yields the base URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, object] = {}

    async def start() -> None:
        app = web.Application()
        app.router.add_static("/", folder)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["runner"] = runner
        box["port"] = runner.addresses[0][1]
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True, name="demo-server")
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    ready.wait(10)
    try:
        yield f"http://127.0.0.1:{box['port']}"
    finally:
        runner = box["runner"]
        assert isinstance(runner, web.AppRunner)
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def main(argv: list[str]) -> int:
    output = argv[0] if argv else "out/download"
    with serve_folder(IMAGES) as base, tempfile.TemporaryDirectory() as tmp:
        urls = Path(tmp) / "urls.txt"
        files = sorted(p.relative_to(IMAGES).as_posix() for p in IMAGES.rglob("*") if p.is_file())
        urls.write_text("".join(f"{base}/{f}\n" for f in files))
        return cli_main(
            ["process", "--urls", str(urls), "--output", output, "--allow-private-hosts"]
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
