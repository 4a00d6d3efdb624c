"""Entry point: ``finetune-dashboard`` serves the read-only web dashboard of FineTuneJobs."""

from __future__ import annotations

import argparse
import logging
import re

from aiohttp import web

NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="finetune-dashboard",
        description="Serve a read-only web view of FineTuneJobs: live list, curves, events, comparison.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--all-namespaces", action="store_true", help="show FineTuneJobs of every namespace")
    scope.add_argument("--namespace", action="append", default=[], help="show this namespace (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (the chart uses 0.0.0.0)")
    p.add_argument("--port", type=int, default=8090, help="port to listen on")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.all_namespaces and not args.namespace:
        p.error("give --all-namespaces or at least one --namespace")
    if not 0 < args.port < 65536:
        p.error(f"--port {args.port}: give a port from 1 to 65535")
    for ns in args.namespace:
        if not NAMESPACE.fullmatch(ns):
            p.error(f"--namespace {ns!r}: not a namespace name (lower-case letters, digits and '-', at most 63)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from finetune_dashboard.kube import JobStore
    from finetune_dashboard.server import make_app

    store = JobStore(None if args.all_namespaces else args.namespace)
    store.start()
    # The event streams never end by themselves: on SIGTERM, give open requests a moment, not a minute.
    web.run_app(make_app(store), host=args.host, port=args.port, access_log=None, print=None, shutdown_timeout=2)
    store.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
