"""Pairs manifest: loading, validation errors that name the line, writing, digest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from id2_plugin.errors import ConfigError
from id2_plugin.pairs import ManifestError, Pair, group_by_origin, load_pairs, manifest_digest, write_pairs


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    for name in ("o1.jpg", "o2.jpg", "e1.jpg", "e2.jpg", "e3.jpg"):
        (tmp_path / "img" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "img" / name).write_bytes(b"x")
    return tmp_path


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_resolves_paths_relative_to_manifest_and_keeps_provenance(files: Path) -> None:
    m = _write(
        files / "pairs.jsonl",
        [
            json.dumps(
                {
                    "query": "img/e1.jpg",
                    "origin": "img/o1.jpg",
                    "model": "sd2",
                    "prompt": "snow",
                    "strength": 0.9,
                    "source": "x",
                    "id": 7,
                }
            ),
            "",
            json.dumps({"query": "img/e2.jpg", "origin": "img/o1.jpg"}),
            json.dumps({"query": "img/e3.jpg", "origin": str(files / "img" / "o2.jpg")}),
        ],
    )
    pairs = load_pairs(m)
    assert [p.line for p in pairs] == [1, 3, 4]
    assert pairs[0].query == (files / "img" / "e1.jpg").resolve()
    assert (pairs[0].model, pairs[0].prompt, pairs[0].strength, pairs[0].source) == ("sd2", "snow", 0.9, "x")
    assert pairs[0].extra == {"id": 7}
    assert pairs[1].model is None and pairs[1].strength is None
    groups = group_by_origin(pairs)
    assert [len(v) for v in groups.values()] == [2, 1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query": "img/e1.jpg", "origin": ', "malformed JSON"),
        ('["img/e1.jpg", "img/o1.jpg"]', "expected a JSON object"),
        ('{"query": "img/e1.jpg"}', "'origin' must be a non-empty string"),
        ('{"query": "img/e1.jpg", "origin": "img/o1.jpg", "strength": 1.5}', "'strength' must be a number in [0, 1]"),
        ('{"query": "img/o1.jpg", "origin": "img/o1.jpg"}', "same file"),
        ('{"query": "img/e1.jpg", "origin": "img/o1.jpg", "prompt": 3}', "'prompt' must be a string"),
    ],
)
def test_malformed_lines_name_the_line(files: Path, line: str, message: str) -> None:
    m = _write(files / "pairs.jsonl", [json.dumps({"query": "img/e2.jpg", "origin": "img/o2.jpg"}), line])
    with pytest.raises(ManifestError) as exc:
        load_pairs(m)
    assert "pairs.jsonl:2:" in str(exc.value)
    assert message in str(exc.value)


def test_missing_file_names_line_and_path(files: Path) -> None:
    m = _write(
        files / "pairs.jsonl",
        [
            json.dumps({"query": "img/e1.jpg", "origin": "img/o1.jpg"}),
            json.dumps({"query": "img/nope.jpg", "origin": "img/o1.jpg"}),
        ],
    )
    with pytest.raises(ManifestError, match=r"line 2: query file not found: .*nope\.jpg"):
        load_pairs(m)
    assert len(load_pairs(m, check_files=False)) == 2


def test_duplicate_pair_and_conflicting_origin(files: Path) -> None:
    a = json.dumps({"query": "img/e1.jpg", "origin": "img/o1.jpg"})
    with pytest.raises(ManifestError, match=r":3: duplicate pair .*line 1"):
        load_pairs(_write(files / "dup.jsonl", [a, json.dumps({"query": "img/e2.jpg", "origin": "img/o1.jpg"}), a]))
    with pytest.raises(ManifestError, match=r":2: query .* already has origin .*line 1"):
        load_pairs(_write(files / "two.jsonl", [a, json.dumps({"query": "img/e1.jpg", "origin": "img/o2.jpg"})]))


def test_missing_or_empty_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        load_pairs(tmp_path / "none.jsonl")
    with pytest.raises(ManifestError, match="no pairs"):
        load_pairs(_write(tmp_path / "empty.jsonl", ["", "  "]))
    assert issubclass(ManifestError, ConfigError)  # the CLI maps it to exit code 2


def test_write_then_load_round_trip_and_digest(files: Path) -> None:
    pairs = [
        Pair(query=files / "img" / "e1.jpg", origin=files / "img" / "o1.jpg", prompt="a dog", strength=0.5),
        Pair(query=files / "img" / "e3.jpg", origin=files / "img" / "o2.jpg", source="s"),
    ]
    out = write_pairs(files / "sub" / "pairs.jsonl", pairs)
    first = json.loads(out.read_text().splitlines()[0])
    assert first == {"query": "../img/e1.jpg", "origin": "../img/o1.jpg", "prompt": "a dog", "strength": 0.5}
    back = load_pairs(out)
    assert [(p.query, p.origin, p.prompt, p.strength, p.source) for p in back] == [
        (p.query.resolve(), p.origin.resolve(), p.prompt, p.strength, p.source) for p in pairs
    ]
    d1 = manifest_digest(out)
    assert d1 == manifest_digest(out) and len(d1) == 64
    write_pairs(out, pairs[:1])
    assert manifest_digest(out) != d1


def test_real_edits_dev_manifest_loads(real_edits_dir: Path) -> None:
    pairs = load_pairs(real_edits_dir / "pairs.jsonl")
    assert len(pairs) == 27
    assert len(group_by_origin(pairs)) == 15
    assert all(p.query.is_file() and p.origin.is_file() for p in pairs)
