"""`id2-plugin index verify [--repair]` as users run it, on stores damaged in their content (not their length)."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np

from id2_plugin.stores.faiss_store import FaissStore
from id2_plugin.types import ReferenceRecord

DIM = 32


def _store(path: Path, n: int = 200) -> np.ndarray:
    x = np.random.default_rng(3).standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    recs = [ReferenceRecord(sha256=hashlib.sha256(str(i).encode()).hexdigest(), uri=f"ref/{i}") for i in range(n)]
    with FaissStore(path, "test-embedder@0/32", DIM, create=True) as store:
        store.add(x, recs)
    return x


def _verify(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("id2-plugin")
    return subprocess.run(
        [str(exe), "--set", f"store.path={store}", "index", "verify", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_flipped_bytes_in_the_vector_file_are_reported_and_repaired(tmp_path: Path) -> None:
    _store(tmp_path / "s")
    raw = tmp_path / "s" / "vectors.0.f32"
    data = bytearray(raw.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xA5 for b in data[mid : mid + 64])
    raw.write_bytes(bytes(data))
    res = _verify(tmp_path / "s")
    assert res.returncode == 3 and "do not match their checksum" in res.stdout, res.stdout + res.stderr
    res = _verify(tmp_path / "s", "--repair")
    assert (
        res.returncode == 0
        and (
            "repaired: dropped 1 reference(s) whose vectors were damaged (cannot be "
            "recovered: add them again): 100 ('ref/100')"
        )
        in res.stdout
    )
    assert _verify(tmp_path / "s").stdout == "store is sound\n"


def test_a_corrupted_sqlite_page_is_one_error_line_and_exit_3(tmp_path: Path) -> None:
    _store(tmp_path / "s")
    db = tmp_path / "s" / "store.sqlite"
    with sqlite3.connect(db) as conn:
        page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_refs_1'").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(db.read_bytes())
    at = (page - 1) * size + 8
    data[at : at + 200] = b"Z" * 200
    db.write_bytes(bytes(data))
    res = _verify(tmp_path / "s")
    assert res.returncode == 3 and "store.sqlite fails SQLite's integrity check" in res.stdout
    assert res.stdout.splitlines()[-1].startswith("store is damaged; restore store.sqlite from a backup")
    assert "Traceback" not in res.stderr
    res = _verify(tmp_path / "s", "--repair")
    assert res.returncode == 3 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert "restore store.sqlite from a backup" in res.stderr
