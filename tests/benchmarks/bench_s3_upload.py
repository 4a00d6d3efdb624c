"""Benchmark: upload a checkpoint-like directory to MinIO with the trainer's storage module, awscli and s5cmd.

Writes a directory of random (incompressible) bytes shaped like a training checkpoint - one large
weights file, an optimizer state, a few shards and small metadata files - then uploads it with
each tool in turn, round-robin for ``--rounds`` rounds, and prints the median throughput of each
and the ratios. Every tool is timed as a command (process start included), into a fresh prefix,
and the uploaded bytes are checked. The directory and the uploaded objects are deleted at the end.

Needs the local MinIO (``tests/cluster/up.sh``) and the two comparison tools, neither of which is a
project dependency:

    # awscli in a virtualenv of its own: it pins botocore, which must not change the project's venv
    .venv/bin/python -m venv .cache/bench/awscli-venv
    .cache/bench/awscli-venv/bin/pip install awscli==1.46.3
    # s5cmd, built from its module at a pinned version (the Go proxy has it; .cache/ is git-ignored)
    (cd "$(mktemp -d)" && go mod init b && go get github.com/peak/s5cmd/v2@v2.3.0 &&
     go build -o "$OLDPWD/.cache/bench/bin/s5cmd-v2.3.0" github.com/peak/s5cmd/v2)

    .venv/bin/python tests/benchmarks/bench_s3_upload.py --size-mb 1536 --rounds 3
    .venv/bin/python tests/benchmarks/bench_s3_upload.py --tune   # chunk size x concurrency of the storage module
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.cluster.fixture import read_env_file, run_dir  # noqa: E402

MB = 1024 * 1024
AWS = ROOT / ".cache" / "bench" / "awscli-venv" / "bin" / "aws"
S5CMD = ROOT / ".cache" / "bench" / "bin" / "s5cmd-v2.3.0"
BUCKET = "bench-s3-upload"

# The storage module's upload, as a command of its own (so its start-up is timed like the others').
STORAGE_UPLOAD = """
import sys
from pathlib import Path
from finetune_trainer.s3_types import S3Settings, S3Uri
from finetune_trainer.storage import S3Storage
directory, bucket, prefix, chunk_mb, concurrency = sys.argv[1:6]
storage = S3Storage(S3Settings.resolve(None))
if int(chunk_mb):
    storage.chunk_size = int(chunk_mb) * 1024 * 1024
if int(concurrency):
    storage.concurrency = int(concurrency)
storage.upload_directory(Path(directory), S3Uri(bucket, prefix))
"""


def checkpoint_files(total_mb: int) -> dict[str, int]:
    """Relative path -> size in bytes, adding up to total_mb: weights 60%, optimizer 30%, 4 shards, metadata."""
    total = total_mb * MB
    files = {
        "model.safetensors": int(total * 0.6),
        "optimizer.pt": int(total * 0.3),
        "config.json": 900,
        "tokenizer.json": 711_493,
        "tokenizer_config.json": 600,
        "trainer_state.json": 4_000,
        "training_args.bin": 5_300,
        "scheduler.pt": 1_500,
        "rng_state.pth": 14_400,
    }
    rest = total - sum(files.values())
    for i in range(4):
        files[f"global_step100/zero_pp_rank_{i}_mp_rank_00_optim_states.pt"] = rest // 4
    return files


def write_directory(root: Path, sizes: dict[str, int]) -> None:
    block = 8 * MB
    for name, size in sizes.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            left = size
            while left > 0:
                n = min(block, left)
                f.write(os.urandom(n))
                left -= n


def s3_env(cluster: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": cluster["FTJ_S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": cluster["FTJ_S3_SECRET_KEY"],
        "AWS_DEFAULT_REGION": cluster["FTJ_S3_REGION"],
        "AWS_REGION": cluster["FTJ_S3_REGION"],
        "AWS_ENDPOINT_URL_S3": cluster["FTJ_S3_ENDPOINT"],
    }


def commands(
    directory: Path, endpoint: str, chunk_mb: int = 0, concurrency: int = 0
) -> dict[str, Callable[[str], list[str]]]:
    """Tool name -> argv uploading directory under a prefix."""
    return {
        "storage module": lambda prefix: [
            sys.executable,
            "-c",
            STORAGE_UPLOAD,
            str(directory),
            BUCKET,
            prefix,
            str(chunk_mb),
            str(concurrency),
        ],
        "awscli": lambda prefix: [
            str(AWS),
            "s3",
            "cp",
            "--recursive",
            "--only-show-errors",
            "--endpoint-url",
            endpoint,
            str(directory),
            f"s3://{BUCKET}/{prefix}",
        ],
        "s5cmd": lambda prefix: [
            str(S5CMD),
            "--endpoint-url",
            endpoint,
            "cp",
            f"{directory}/*",
            f"s3://{BUCKET}/{prefix}",
        ],
    }


def uploaded_bytes(client: object, prefix: str) -> int:
    paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    return sum(o["Size"] for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix) for o in page.get("Contents", []))


def delete_prefix(client: object, prefix: str) -> None:
    paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})  # type: ignore[attr-defined]


def timed_upload(argv: list[str], env: dict[str, str], client: object, prefix: str, expected: int) -> float:
    """Seconds the command took; fails when it did not upload every byte. The prefix is deleted afterwards."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    got = uploaded_bytes(client, prefix)
    delete_prefix(client, prefix)
    if got != expected:
        raise SystemExit(f"{argv[0]} uploaded {got} bytes, expected {expected}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1536, help="size of the checkpoint directory (MiB)")
    parser.add_argument("--rounds", type=int, default=3, help="uploads per tool (round-robin); the median counts")
    parser.add_argument("--tune", action="store_true", help="sweep chunk size x concurrency of the storage module")
    parser.add_argument("--workdir", default=None, help="where to write the directory (default: a temp dir)")
    args = parser.parse_args()

    for tool, path in (("awscli", AWS), ("s5cmd", S5CMD)):
        if not args.tune and not path.exists():
            raise SystemExit(f"{tool} not found at {path}; see this script's docstring for how to install it")
    cluster = read_env_file(run_dir() / "cluster.env")
    endpoint = cluster["FTJ_S3_ENDPOINT"]
    env = s3_env(cluster)
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)

    work = Path(tempfile.mkdtemp(prefix="bench-s3-", dir=args.workdir))
    try:
        sizes = checkpoint_files(args.size_mb)
        directory = work / "checkpoint-100"
        write_directory(directory, sizes)
        total = sum(sizes.values())
        print(f"directory: {len(sizes)} files, {total / MB:.0f} MiB (largest {max(sizes.values()) / MB:.0f} MiB)")
        print(f"endpoint: {endpoint} (MinIO on this machine; {os.cpu_count()} CPUs)")

        if args.tune:
            print("\nstorage module, chunk size x concurrency (MB/s, best of rounds):")
            for chunk_mb, concurrency in itertools.product((8, 16, 32, 64), (4, 8, 16, 32)):
                argv_of = commands(directory, endpoint, chunk_mb, concurrency)["storage module"]
                best = min(
                    timed_upload(argv_of(f"tune-{uuid.uuid4().hex[:6]}/"), env, client, "tune-", total)
                    for _ in range(args.rounds)
                )
                print(f"  chunk {chunk_mb:>2} MiB  concurrency {concurrency:>2}: {total / MB / best:7.1f} MB/s")
            return

        seconds: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for tool, argv_of in commands(directory, endpoint).items():
                prefix = f"{tool.replace(' ', '-')}-{uuid.uuid4().hex[:6]}/"
                seconds.setdefault(tool, []).append(timed_upload(argv_of(prefix), env, client, prefix, total))
        speed = {tool: total / MB / statistics.median(s) for tool, s in seconds.items()}
        print("\n| tool | median s | MiB/s | runs (s) |\n|---|---|---|---|")
        for tool, runs in seconds.items():
            listed = ", ".join(f"{s:.2f}" for s in runs)
            print(f"| {tool} | {statistics.median(runs):.2f} | {speed[tool]:.0f} | {listed} |")
        print(
            f"\nstorage module / awscli: {speed['storage module'] / speed['awscli']:.2f}x   "
            f"storage module / s5cmd: {speed['storage module'] / speed['s5cmd']:.2f}x"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        delete_prefix(client, "")
        client.delete_bucket(Bucket=BUCKET)


if __name__ == "__main__":
    main()
