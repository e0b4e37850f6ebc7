"""FaissStore under concurrency and crashes: a writer process beside a reader process, a writer dying at
each step of a commit (os._exit through the fault seam, and SIGKILL at a random point), and resuming an
interrupted bulk load without duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.stores.faiss_store import FaissStore

DIM = 64
EMB = "test-embedder@0123/256/squash"

# Shared by the child processes: deterministic vectors and records for ids 0..n-1.
PRELUDE = """
import hashlib, json, os, sys, time
import numpy as np
from id2_plugin.stores import _faiss_writer
from id2_plugin.stores.faiss_store import FaissStore
from id2_plugin.types import ReferenceRecord
DIM = 64
EMB = "test-embedder@0123/256/squash"
def vectors(n):
    x = np.random.default_rng(123).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
def recs(a, b):
    return [ReferenceRecord(sha256=hashlib.sha256(str(i).encode()).hexdigest(), uri=f"ref/{i}") for i in range(a, b)]
"""

WRITER = (
    PRELUDE
    + """
path, kind, opts, start, stop, batch = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), *map(int, sys.argv[4:7])
x = vectors(stop)
s = FaissStore(path, EMB, DIM, index=kind, index_options=opts, create=True)
dups = 0
for a in range(start, stop, batch):
    r = s.add(x[a:a + batch], recs(a, min(a + batch, stop)))
    dups += len(r.duplicates)
    print("committed", a + batch, flush=True)
print("done", dups, flush=True)
"""
)

READER = (
    PRELUDE
    + """
path, n_probe, done_flag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
probe = vectors(n_probe)
s = FaissStore(path)
counts, gens, wrong, it = [], [], 0, 0
finished = False
while not finished:
    finished = os.path.exists(done_flag)  # one more full pass after the writer is done
    res = s.query(probe, k=1)
    wrong += sum(r[0].reference_id != str(i) for i, r in enumerate(res))
    info = s.info()
    counts.append(info.count)
    gens.append(info.generation)
    it += 1
    if it == 1:  # the test starts the writer only now, so that the reads overlap its commits
        open(done_flag + ".ready", "w").close()
print(json.dumps({"counts": counts, "gens": gens, "wrong": wrong, "iterations": it}))
"""
)

CRASHER = (
    PRELUDE
    + """
path, stage = sys.argv[1], sys.argv[2]
def hook(name):
    if name == stage:
        os._exit(17)
_faiss_writer.fault_hook = hook
x = vectors(500)
s = FaissStore(path, EMB, DIM)
s.add(x[400:500], recs(400, 500))
print("no crash", flush=True)
"""
)

FORKER = (
    PRELUDE
    + """
path = sys.argv[1]
x = vectors(20)
s = FaissStore(path, EMB, DIM, create=True)
s.add(x[:10], recs(0, 10))
s.query(x[:1], k=1)  # the parent now holds a connection, a loaded index and a lock handle
pid = os.fork()
if pid == 0:
    code = 1
    try:
        s.add(x[10:], recs(10, 20))
        code = 0
    except BaseException as exc:
        print("child:", repr(exc), flush=True)
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
hits = [r[0].reference_id for r in s.query(x, k=1)]
print(json.dumps({"child": os.waitstatus_to_exitcode(status), "count": s.info().count, "hits": hits}))
"""
)

IVF = {"nlist": 8, "merge_min": 0, "train_min": 300}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # two processes on a shared 2-core box
    return env


def _run(script: str, *args: object, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=_env()
    )


def _vectors(n: int) -> np.ndarray:
    x = np.random.default_rng(123).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _sha(i: int) -> str:
    import hashlib

    return hashlib.sha256(str(i).encode()).hexdigest()


def _self_hits(store: FaissStore, ids: range) -> float:
    """Fraction of stored vectors whose exact query returns their own record (vector and metadata agree)."""
    x = _vectors(max(ids) + 1)
    res = store.query(x[list(ids)], k=1)
    return float(np.mean([bool(r) and r[0].sha256 == _sha(i) for i, r in zip(ids, res)]))


@pytest.mark.parametrize(
    "kind,opts",
    [
        ("ivf_flat", {"nlist": 8, "merge_min": 100, "merge_ratio": 0.2, "train_min": 300}),
        ("hnsw", {"M": 16, "merge_min": 60, "merge_ratio": 0.2}),
    ],
)
def test_concurrent_reader_and_writer(tmp_path: Path, kind: str, opts: dict) -> None:
    store = tmp_path / "s"
    first = _run(WRITER, store, kind, json.dumps(opts), 0, 100, 100)
    assert first.returncode == 0, first.stderr
    done = tmp_path / "writer-done"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(store), "100", str(done)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    ready, deadline = Path(f"{done}.ready"), time.monotonic() + 120
    while not ready.exists() and reader.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    writer = _run(WRITER, store, kind, json.dumps(opts), 100, 1300, 40)
    done.touch()
    out, err = reader.communicate(timeout=180)
    assert writer.returncode == 0, writer.stderr
    assert reader.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    counts, gens = got["counts"], got["gens"]
    assert counts == sorted(counts) and gens == sorted(gens), "a reader went back in time"
    assert counts[-1] == 1300 and len(set(counts)) > 2, counts  # it saw intermediate commits
    assert got["wrong"] <= 0.01 * 100 * got["iterations"]
    with FaissStore(store) as s:
        assert s.info().count == 1300
        assert _self_hits(s, range(1300)) >= 0.99


@pytest.mark.parametrize(
    "stage,committed",
    [
        ("add:raw_written", False),
        ("add:before_commit", False),
        ("add:committed", True),
        ("merge:tmp_written", True),
        ("merge:renamed", True),
    ],
)
def test_crash_mid_commit_keeps_last_commit(tmp_path: Path, stage: str, committed: bool) -> None:
    store = tmp_path / "s"
    setup = _run(WRITER, store, "ivf_flat", json.dumps(IVF), 0, 400, 400)
    assert setup.returncode == 0, setup.stderr
    with FaissStore(store) as s:
        before = s.info()
    crash = _run(CRASHER, store, stage)
    assert crash.returncode == 17, (crash.stdout, crash.stderr)
    if stage.startswith("merge:"):
        assert list(store.glob("*.tmp")) or stage != "merge:tmp_written"
    with FaissStore(store) as s:
        info = s.info()
        assert info.count == (500 if committed else 400)
        # the merge never committed: the new rows sit in the exact buffer, the old snapshot is still in use
        assert info.extra["indexed"] == 400
        assert info.extra["exact_buffer"] == (100 if committed else 0)
        assert info.generation == before.generation + (1 if committed else 0)
        assert _self_hits(s, range(info.count)) >= 0.99
        assert s.contains([_sha(450)]) == [committed]
    # the next writer cleans up what the crash left and carries on
    again = _run(WRITER, store, "ivf_flat", json.dumps(IVF), 0, 600, 200)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith(f"done {500 if committed else 400}")
    with FaissStore(store) as s:
        info = s.info()
        assert info.count == 600 and info.extra["exact_buffer"] == 0
        assert _self_hits(s, range(600)) >= 0.99
    assert not list(store.glob("*.tmp"))
    assert len(list(store.glob("main.*.faiss"))) <= 2


def test_sigkill_during_bulk_add_then_resume_without_duplicates(tmp_path: Path) -> None:
    store = tmp_path / "s"
    n, batch = 3000, 50
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store), "ivf_flat", json.dumps(IVF), "0", str(n), str(batch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:
        if line.startswith("committed"):
            seen += 1
        if seen == 12:  # well into the IVF phase (trained at 300): folds and snapshots on every batch
            time.sleep(np.random.default_rng(0).uniform(0.0, 0.05))
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with FaissStore(store) as s:
        partial = s.info().count
        assert partial % batch == 0 and 12 * batch <= partial < n
        assert _self_hits(s, range(partial)) >= 0.99
    resumed = _run(WRITER, store, "ivf_flat", json.dumps(IVF), 0, n, batch)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().endswith(f"done {partial}")  # exactly the committed part is skipped
    with FaissStore(store) as s:
        info = s.info()
        assert info.count == n
        assert _self_hits(s, range(n)) >= 0.99
        assert s.contains([_sha(i) for i in (0, partial - 1, partial, n - 1)]) == [True] * 4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_writes_through_its_own_lock_and_connection(tmp_path: Path) -> None:
    """A child forked from a process that used the store can write, and the parent then sees the rows."""
    res = _run(FORKER, tmp_path / "s")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report == {"child": 0, "count": 20, "hits": [str(i) for i in range(20)]}, res.stdout
