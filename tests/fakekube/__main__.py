"""`python -m fakekube --port 0 [--state-dir DIR]`: serve until SIGTERM; prints `KUBECONFIG=<path> URL=<url>`."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Sequence

from .server import FakeKube


def _watchlist(value: str) -> bool | str:
    modes: dict[str, bool | str] = {"true": True, "false": False, "ignore": "ignore"}
    return modes[value]


async def serve(args: argparse.Namespace) -> None:
    kube = FakeKube(
        tls=not args.no_tls,
        host=args.host,
        port=args.port,
        bookmark_interval=args.bookmark_interval,
        history=args.history,
        watchlist=args.watchlist,
        auto_endpointslices=args.auto_endpointslices,
        split_writes=args.split_writes,
        seed=args.seed,
        state_dir=args.state_dir,
    )
    async with kube:
        if args.load:
            with open(args.load) as f:
                data = json.load(f)
            kube.bulk_load(data["items"] if isinstance(data, dict) else data)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"KUBECONFIG={kube.kubeconfig} URL={kube.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fakekube", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state-dir", help="where kubeconfig, ca.crt and token go (default: a temporary directory)")
    parser.add_argument("--no-tls", action="store_true", help="plain HTTP")
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--watchlist", type=_watchlist, default=True, help="true | false | ignore")
    parser.add_argument("--auto-endpointslices", action="store_true")
    parser.add_argument("--split-writes", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--load", help="a JSON List (or array) of objects to load at start")
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
