"""Build the krew archive of kubectl finetune, byte for byte reproducible, and check or write its sha256 in
krew/finetune.yaml: ``python krew/archive.py [--write] [--out DIR]``."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
import sys
import tarfile
from pathlib import Path

KREW = Path(__file__).resolve().parent
MANIFEST = KREW / "finetune.yaml"
FILES = {"kubectl-finetune": 0o755}
ARCHIVE = "kubectl-finetune.tar.gz"


def build() -> bytes:
    """The archive: the shim only, with fixed owners, modes and times (the same bytes on every machine)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in FILES.items():
            data = (KREW / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uid, info.gid = len(data), mode, 0, 0, 0
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Check (default) or --write the manifest's sha256; --out DIR also saves the archive there."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="write the sha256 into the manifest")
    parser.add_argument("--out", type=Path, help="save the archive in this folder")
    args = parser.parse_args(argv)
    archive = build()
    digest = hashlib.sha256(archive).hexdigest()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / ARCHIVE).write_bytes(archive)
    text = MANIFEST.read_text()
    if args.write:
        MANIFEST.write_text(re.sub(r"sha256: [0-9a-f]{64}", f"sha256: {digest}", text))
        return 0
    if f"sha256: {digest}" not in text:
        print(f"{MANIFEST} is stale: run `python krew/archive.py --write` (archive sha256 {digest})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
