"""Entry point: ``finetune-operator`` (or ``python -m finetune_operator``) runs the kopf operator."""

from __future__ import annotations

import argparse
import copy
import logging
import random

import kopf
from prometheus_client import start_http_server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="finetune-operator", description="Run the FineTuneJob operator.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--all-namespaces", action="store_true", help="watch FineTuneJobs in every namespace")
    scope.add_argument("--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics port (0: off)")
    p.add_argument("--health-port", type=int, default=8081, help="liveness endpoint port, /healthz (0: off)")
    p.add_argument("--peering", default="finetune-operator", help="kopf peering name shared by the replicas")
    p.add_argument("--standalone", action="store_true", help="no peering (a single replica, or tests)")
    p.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; the highest acts. Default: random, so identical replicas never tie "
        "(kopf lets tied peers all act)",
    )
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.all_namespaces and not args.namespace:
        p.error("give --all-namespaces or at least one --namespace")
    return args


class ObjectFormatter(logging.Formatter):
    """Prefixes kopf's per-object lines with the object, ``[namespace/name]``: without it the lines of
    two jobs (or two events of one job) are the same text and read as one line printed twice."""

    def format(self, record: logging.LogRecord) -> str:
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict) and ref.get("name"):
            record = copy.copy(record)
            where = f"{ref['namespace']}/{ref['name']}" if ref.get("namespace") else ref["name"]
            record.msg = f"[{where}] {record.msg}"
        return super().format(record)


def configure_logging(verbose: bool) -> None:
    """Exactly one handler on the root logger, however often this runs: one a library or an earlier call
    installed is replaced, not added to (two handlers print every line twice)."""
    handler = logging.StreamHandler()
    handler.setFormatter(ObjectFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    from finetune_operator import handlers  # noqa: F401  (registers the handlers)

    if args.metrics_port:
        start_http_server(args.metrics_port, addr="0.0.0.0")
    kopf.run(
        clusterwide=args.all_namespaces,
        namespaces=args.namespace,
        standalone=args.standalone,
        # Naming a peering makes kopf require it; a standalone operator must not name one.
        peering_name=None if args.standalone else args.peering,
        priority=None if args.standalone else (args.priority or random.randint(1, 1_000_000)),
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
