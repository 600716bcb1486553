"""``make bench`` / ``python -m bench [engine ...]``: run the benchmarks, print their tables."""

from __future__ import annotations

import argparse
import importlib
import sys

SUITES = {
    "engine": "bench.engine",
    "images": "bench.images",
    "formats": "bench.formats",
    "downloads": "bench.downloads",
    "dask": "bench.dask_backend",
    "auto": "bench.auto",
    "numeric": "bench.numeric",
    "dups": "bench.dups",
    "datasets": "bench.datasets",
    "cost": "bench.cost",
    "storage": "bench.storage",
    "longrun": "bench.longrun",
    "spool": "bench.spool",
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("suites", nargs="*", help=f"any of {', '.join(SUITES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats")
    args = parser.parse_args()
    unknown = set(args.suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(sorted(unknown))}")
    for name in args.suites or list(SUITES):
        module = importlib.import_module(SUITES[name])
        print(module.main(quick=args.quick), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
