"""Decoding cost is bounded before decoding: ``id2-plugin query`` on a tiny PNG of 1 x 60,000,000 pixels
(under the 64 MP limit) is refused without ever holding the pixels (it used to peak at 1.9 GB)."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

#: peak resident memory allowed to the whole query process (the model included)
PEAK_RSS_LIMIT_MB = 600
#: runs ``argv`` and prints the peak RSS (KB on Linux) of it, the only child of this fresh interpreter
_MEASURE = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_one_row_png(path: Path, width: int) -> None:
    """An RGB PNG one pixel high, compressed row by row: neither the test nor the file holds the pixels."""
    deflate = zlib.compressobj(9)
    parts = [deflate.compress(b"\x00")]  # the row's filter byte
    block = bytes([120, 30, 200]) * 1_000_000
    for _ in range(width // 1_000_000):
        parts.append(deflate.compress(block))
    parts.append(deflate.flush())
    ihdr = struct.pack(">IIBBBBB", width, 1, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    )


def test_a_one_row_60_megapixel_png_stays_under_600_mb(tmp_path: Path, photo_paths: list[Path]) -> None:
    cli = str(Path(sys.executable).with_name("id2-plugin"))
    config = tmp_path / "id2.yaml"
    config.write_text(
        "embedder:\n  input_size: 64\n  device: cpu\n  projection: none\n  allow_raw_latent: true\n"
        f"store:\n  path: {tmp_path / 'store'}\n"
    )
    subprocess.run(
        [cli, "--config", str(config), "index", "add", str(photo_paths[0])],
        check=True,
        timeout=300,
        capture_output=True,
    )
    wide = tmp_path / "wide.png"
    write_one_row_png(wide, 60_000_000)
    assert wide.stat().st_size < 300_000
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, cli, "--config", str(config), "query", str(wide)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    rc, peak_kb = map(int, out.stdout.split()[-2:])  # after anything the query printed
    assert rc == 4, out.stderr  # unreadable input, reported and skipped
    assert "aspect-ratio limit" in out.stderr
    assert peak_kb / 1024 < PEAK_RSS_LIMIT_MB, f"peak RSS {peak_kb / 1024:.0f} MB"
