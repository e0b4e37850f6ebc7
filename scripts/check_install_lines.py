#!/usr/bin/env python3
"""Run the install table (docs/install.md) in fresh virtualenvs and check that each row delivers what it says.

The table sits between the ``<!-- install-lines ... -->`` markers of docs/install.md. Each row names an extra,
its ``pip install`` lines (backticked, column 2) and what it provides (column 3: backticked module names
are imported, backticked items with a space are run as commands). The first row (the core) is installed
into a base venv after ``pip install torch==2.13.0``; every other row goes into its own fresh venv that
sees only the base (a ``.pth`` file), so a row passes only with what its own lines install on top of the
core. A row whose last column has nothing backticked is listed as not checked.

Usage (from anywhere; commands run in the repository root, with ../shared beside it for the models):
    python3 scripts/check_install_lines.py [--only ROW ...] [--base VENV] [--workdir DIR]
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH = "torch==2.13.0"  # the CPU wheel, installed before any extra (the README's "Set-up")
INSTALL_PAGE = ROOT / "docs" / "install.md"
_START, _END = "<!-- install-lines:", "<!-- install-lines: end -->"


@dataclass(frozen=True)
class Row:
    """One row of the table: the extra, its install commands, the modules to import, the commands to run."""

    extra: str
    installs: tuple[tuple[str, ...], ...]
    imports: tuple[str, ...]
    runs: tuple[tuple[str, ...], ...]


def parse_table(page: str) -> list[Row]:
    """The rows of the install table in ``page`` (the text of docs/install.md), in order."""
    start = page.index(_START)
    block = page[start : page.index(_END, start)]
    rows = []
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("extra", "") or set(cells[0]) <= {"-"}:
            continue
        installs = tuple(
            tuple(shlex.split(c)) for c in re.findall(r"`([^`]+)`", cells[1]) if c.startswith("pip install")
        )
        provided = re.findall(r"`([^`]+)`", cells[2])
        rows.append(
            Row(
                cells[0],
                installs,
                tuple(p for p in provided if " " not in p),
                tuple(tuple(shlex.split(p)) for p in provided if " " in p),
            )
        )
    return rows


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _argv(venv: Path, words: tuple[str, ...]) -> list[str]:
    """``pip ...`` / ``python ...`` / a console script, all from ``venv``."""
    py = str(venv / "bin" / "python")
    if words[0] == "pip":
        return [py, "-m", "pip", *words[1:], "-q"]
    if words[0] == "python":
        return [py, *words[1:]]
    return [str(venv / "bin" / words[0]), *words[1:]]


def _run(venv: Path, words: tuple[str, ...], log: list[str], cwd: Path = ROOT) -> bool:
    cmd = _argv(venv, words)
    # The caller's environment (pip's index and certificate settings) minus anything pointing at another Python.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}", VIRTUAL_ENV=str(venv))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    log.append(f"$ {' '.join(words)} -> {proc.returncode}")
    if proc.returncode != 0:
        noise = "WARNING: Location"  # pip's note on configured local indexes that are absent
        tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if not ln.startswith(noise)][-25:]
        log.extend(f"    {ln}" for ln in tail)
    return proc.returncode == 0


def check_row(row: Row, venv: Path, log: list[str]) -> bool:
    """Install ``row`` into ``venv``, then import and run what it provides; False at the first failure."""
    for words in row.installs:
        if not _run(venv, words, log):
            return False
    # Imports run outside the checkout: from its root, ./id2_plugin would shadow the installed package.
    imports = ("python", "-c", "; ".join(f"import {m}" for m in row.imports))
    if row.imports and not _run(venv, imports, log, cwd=venv):
        return False
    return all(_run(venv, words, log) for words in row.runs)


def make_venv(path: Path, base: Path | None) -> Path:
    """A fresh venv at ``path``; with ``base``, it also sees the base venv's packages (after its own)."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    if base is not None:
        (_site_packages(path) / "_id2_install_base.pth").write_text(f"{_site_packages(base)}\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="Check only these rows (the core row always runs).")
    ap.add_argument("--base", type=Path, default=None, help="Reuse this venv (torch installed) as the base.")
    ap.add_argument("--workdir", type=Path, default=None, help="Where the venvs go (default: a temporary folder).")
    args = ap.parse_args()
    rows = parse_table(INSTALL_PAGE.read_text(encoding="utf-8"))
    core, hosts = rows[0], rows[1:]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="id2-install-"))
    failed: list[str] = []
    t_all = time.monotonic()
    base = args.base or make_venv(work / "base", None)
    for row in [core, *(r for r in hosts if args.only is None or r.extra in args.only)]:
        t0, log = time.monotonic(), []
        if not row.imports and not row.runs:
            print(f"[skip] {row.extra}: not checked (docs/install.md says why)", flush=True)
            continue
        if row is core:
            ok = (args.base is not None or _run(base, ("pip", "install", TORCH), log)) and check_row(row, base, log)
        else:
            ok = check_row(row, make_venv(work / row.extra, base), log)
        print(f"[{'ok' if ok else 'FAIL'}] {row.extra} in {time.monotonic() - t0:.0f} s", flush=True)
        if not ok:
            print("\n".join(log), flush=True)
            failed.append(row.extra)
            if row is core:
                break  # every other row stands on the core
    if args.workdir is None and not failed:
        shutil.rmtree(work, ignore_errors=True)  # GBs of venvs; kept only when a row failed, to inspect
        where = "removed"
    else:
        where = f"in {work}"
    print(f"install lines: {len(failed)} failed {failed or ''} in {time.monotonic() - t_all:.0f} s (venvs {where})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
