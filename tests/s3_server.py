"""A real S3 API server on 127.0.0.1 for the storage tests: moto's ``ThreadedMotoServer`` on
port 0, reached with s3fs (the client pixpipe uses), fake credentials from the environment.

:func:`s3` starts it and yields an :class:`S3`: the endpoint, the environment a pixpipe
subprocess runs with (fake keys; the working folders in the test's tmp folder), the
``--storage-options`` that name the endpoint, and a file system to put and look at objects.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Fake credentials: moto takes any; the tests check that the secret never shows anywhere.
KEY = "AKIAPIXPIPETESTKEY00"
SECRET = "pixpipe-test-secret-do-not-print-0123456789"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class S3:
    endpoint: str
    work: Path  # PIXPIPE_WORK_DIR of the runs

    @property
    def options(self) -> dict[str, Any]:
        return {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": self.endpoint}}

    @property
    def options_json(self) -> str:
        return json.dumps(self.options)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            PYTHONPATH=str(ROOT),
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            PIXPIPE_WORK_DIR=str(self.work),
        )
        env.update(extra)
        return env

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(
            key=KEY,
            secret=SECRET,
            client_kwargs={"endpoint_url": self.endpoint},
            skip_instance_cache=True,
        )

    def bucket(self, name: str) -> str:
        self.fs().mkdir(name)
        return name

    def put_tree(self, local: Path, url: str) -> int:
        """Upload the files below ``local`` to the prefix ``url``; the number of files."""
        fs = self.fs()
        n = 0
        for path in sorted(local.rglob("*")):
            if path.is_file():
                fs.pipe_file(
                    f"{url.rstrip('/')}/{path.relative_to(local).as_posix()}", path.read_bytes()
                )
                n += 1
        return n

    def objects(self, url: str) -> dict[str, int]:
        """Key below ``url`` -> size, of every object there."""
        fs = self.fs()
        base = url.removeprefix("s3://").rstrip("/")
        found = fs.find(base, detail=True)
        return {k[len(base) + 1 :]: int(v["size"]) for k, v in found.items()}

    def read(self, url: str) -> bytes:
        return bytes(self.fs().cat_file(url))

    def records(self, url: str) -> list[dict[str, Any]]:
        """The records of the manifest the run at ``url`` wrote, in order."""
        lines = self.read(f"{url}/manifest.jsonl").decode().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def argv(self, inputs: str, output: str, *more: str) -> list[str]:
        """The command of a run ``inputs`` -> ``output`` with these storage options."""
        return [
            sys.executable,
            *("-m", "pipeline", "process", inputs, "-o", output),
            *("--storage-options", self.options_json, *more),
        ]


@contextlib.contextmanager
def s3(tmp_path: Path) -> Iterator[S3]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # moto's state is per process, not per server: start each test from an empty store
        request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()
        yield S3(endpoint, tmp_path / "work")
    finally:
        server.stop()


def decodes(data: bytes) -> tuple[int, int]:
    """The size of the image ``data`` holds, decoded whole (a truncated one raises)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.size
