"""kubectl finetune: watch, compare and use FineTuneJobs from the terminal (a kubectl plugin).

kubectl finds the executable ``kubectl-finetune`` on PATH. Flags follow kubectl: ``-n``, ``-A``,
``--context``, ``--kubeconfig``, ``-o json|yaml``. Exit codes: 0 done, 1 an error (said on
stderr), 2 a usage error. Colour only when stdout is a terminal and NO_COLOR is unset.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubectl_finetune.formatting import dump
from kubectl_finetune.kube import Cluster, CommandError

FORMATS = ("json", "yaml")
IMAGE_SUFFIXES = (".png", ".svg", ".pdf")


def _common(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("-n", "--namespace", default=default, help="the namespace (default: the context's)")
    parser.add_argument("--context", default=default, help="the kubeconfig context to use")
    parser.add_argument("--kubeconfig", default=default, help="path to the kubeconfig file")


def _output(parser: argparse.ArgumentParser, extra: str = "") -> None:
    parser.add_argument("-o", "--output", default=None, help=f"json or yaml{extra}")


def build_parser() -> argparse.ArgumentParser:
    """The command line: global flags before or after the command."""
    parser = argparse.ArgumentParser(prog="kubectl finetune", description=__doc__.split("\n\n")[0])
    _common(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    later = argparse.SUPPRESS  # a flag after the command overrides one before it, and only then

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _common(p, later)
        return p

    p = command("list", "jobs with phase, progress, step, loss, ETA and age")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="jobs of every namespace")
    _output(p)
    p = command("status", "conditions, events, topology, estimate and artifacts of a job")
    p.add_argument("name")
    _output(p)
    p = command("logs", "trainer logs, each line prefixed by its rank")
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true", help="stream the logs until the pods end")
    ranks = p.add_mutually_exclusive_group()
    ranks.add_argument("--rank", type=int, default=None, help="the node rank to show (default 0)")
    ranks.add_argument("--all", action="store_true", help="every rank")
    p = command("plot", "loss and eval curves from status.history, several runs overlaid")
    p.add_argument("names", nargs="+", metavar="NAME")
    _output(p, ", or an image file to save (.png, .svg, .pdf)")
    p.add_argument("--width", type=int, default=None, help="chart width in characters")
    p = command("compare", "hyper-parameters that differ and final metrics, side by side")
    p.add_argument("names", nargs="+", metavar="NAME")
    _output(p)
    p = command("predict", "run the job's final model on the given inputs")
    p.add_argument("name")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--passage", default=None, help="question-answering: the passage the answer is taken from")
    p.add_argument("--cache-dir", type=Path, default=None, help="where downloaded artifacts are kept")
    p.add_argument("--s3-endpoint", default=None, help="S3 as this machine reaches it (default: the job's endpoint)")
    _output(p)
    for verb, what in (("suspend", "suspend jobs"), ("resume", "resume suspended jobs"), ("delete", "delete jobs")):
        p = command(verb, what)
        p.add_argument("names", nargs="+", metavar="NAME")
    return parser


class Console:
    """Where the command writes: stdout for results, stderr for notes."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty() and not os.environ.get("NO_COLOR")

    def out(self, text: str) -> None:
        print(text, flush=True)

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def _format(args: argparse.Namespace, parser: argparse.ArgumentParser, images: bool = False) -> str | None:
    fmt = getattr(args, "output", None)
    if fmt is None or fmt in FORMATS or (images and fmt.lower().endswith(IMAGE_SUFFIXES)):
        return fmt
    extra = " or an image file (.png, .svg, .pdf)" if images else ""
    parser.error(f"-o/--output {fmt!r} is not supported: use json or yaml{extra}")
    return None


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, console: Console) -> None:
    """Run one parsed command."""
    from kubectl_finetune import compare, jobs, logs, plot

    cluster = Cluster(args.kubeconfig, args.context, args.namespace)
    fmt = _format(args, parser, images=args.command == "plot")
    if args.command == "list":
        found = sorted(
            cluster.jobs(args.all_namespaces), key=lambda j: (j["metadata"]["namespace"], j["metadata"]["name"])
        )
        if fmt:
            console.out(dump({"apiVersion": "v1", "kind": "List", "items": [jobs.list_row(j) for j in found]}, fmt))
        else:
            rows = [jobs.list_row(j) for j in found]
            console.out(jobs.render_list(rows, all_namespaces=args.all_namespaces, tty=console.tty))
    elif args.command == "status":
        job = cluster.job(args.name)
        summary = jobs.status_summary(job, cluster.events(job))
        console.out(dump(summary, fmt) if fmt else jobs.render_status(summary, tty=console.tty))
    elif args.command == "logs":
        job = cluster.job(args.name)
        logs.show_logs(cluster, job, args.rank, args.all, args.follow, console.out, console.tty)
    elif args.command == "plot":
        runs = {name: plot.curves(cluster.job(name)) for name in args.names}
        if fmt in FORMATS:
            console.out(dump({n: {k: [list(p) for p in v] for k, v in c.items()} for n, c in runs.items()}, fmt))
        elif fmt:
            try:
                plot.save_image(runs, Path(fmt))
            except ValueError as err:
                raise CommandError(str(err)) from None
            console.note(f"saved {fmt}")
        else:
            width = args.width or max(30, min(100, shutil.get_terminal_size((80, 24)).columns - 12))
            console.out(plot.render_terminal(runs, width=width, tty=console.tty))
    elif args.command == "compare":
        if len(args.names) < 2:
            parser.error("compare needs two or more job names")
        result = compare.compare([cluster.job(n) for n in args.names])
        console.out(dump(result, fmt) if fmt else compare.render_compare(result))
    elif args.command == "predict":
        from kubectl_finetune import predict

        predictions = predict.predict(
            cluster,
            cluster.job(args.name),
            args.texts,
            context=args.passage,
            cache_dir=args.cache_dir or predict.default_cache_dir(),
            say=console.note,
            s3_endpoint=args.s3_endpoint,
        )
        console.out(dump(predictions, fmt) if fmt else predict.render_predictions(predictions))
    elif args.command in ("suspend", "resume"):
        for name in args.names:
            console.out(jobs.set_suspend(cluster, name, args.command == "suspend"))
    elif args.command == "delete":
        for name in args.names:
            cluster.delete_job(name)
            console.out(f'finetunejob.finetune.dev "{name}" deleted')


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kubectl-finetune``: 0 done, 1 error, 2 usage error."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error, as kubectl does
    console = Console()
    try:
        run(args, parser, console)
    except CommandError as err:
        console.note(f"error: {err}")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as kubectl does; stdout is closed first
        # so Python's flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
