"""tune_search and ``id2-plugin index tune``: the chosen nprobe / efSearch reaches the target recall@1."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from id2_plugin.stores.faiss_store import FaissStore
from id2_plugin.stores.tuning import perturbed_queries, tune_search
from id2_plugin.types import ReferenceRecord

DIM = 64
EMB = "test-embedder@0123/256/squash"


def clustered(n: int, seed: int = 0, centers: int = 50, noise: float = 3.0) -> np.ndarray:
    """Loosely clustered unit vectors: IVF at nprobe=1 then misses a fair share of true neighbours."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, DIM)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + noise * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_store(path: Path, kind: str, opts: dict, x: np.ndarray) -> FaissStore:
    store = FaissStore(path, EMB, DIM, index=kind, index_options=opts, create=True)
    recs = [ReferenceRecord(sha256=hashlib.sha256(str(i).encode()).hexdigest(), uri=f"r{i}") for i in range(len(x))]
    store.add(x, recs)
    return store


def measured_recall(store: FaissStore, x: np.ndarray, seed: int) -> float:
    q = perturbed_queries(
        x[np.random.default_rng(seed).choice(len(x), 300, replace=False)], 0.8, np.random.default_rng(seed + 1)
    )
    exact = np.argmax(q @ x.T, axis=1)
    got = [int(r[0].reference_id) for r in store.query(q, k=1)]
    return float(np.mean(np.array(got) == exact))


def test_tune_ivf_store_reaches_target_and_is_saved(tmp_path: Path) -> None:
    x = clustered(4000)
    target = 0.95
    with make_store(tmp_path / "s", "ivf_flat", {"nlist": 32, "merge_min": 0, "nprobe": 1}, x) as store:
        assert store.info().extra["search_params"]["nprobe"] == 1
        low = measured_recall(store, x, seed=7)
        result = tune_search(store, None, target, n_queries=300, query_similarity=0.8)
        assert result.parameter == "nprobe" and result.reached and result.saved
        assert result.recall_at_1 >= target and 1 <= result.value <= 32
        # cheapest: every smaller setting tried fell short of the target
        assert all(p.recall_at_1 < target for p in result.curve[:-1]) and result.curve[-1].value == result.value
        assert result.curve[0].value == 1 and result.curve[0].recall_at_1 < target
    # a new handle (another process would do the same) uses the saved value ...
    with FaissStore(tmp_path / "s") as reader:
        info = reader.info()
        assert info.extra["search_params"]["nprobe"] == result.value
        assert info.extra["tuned"]["value"] == result.value and info.extra["tuned"]["target_recall"] == target
        tuned = measured_recall(reader, x, seed=7)  # fresh queries, independent of the tuning sample
    assert tuned >= target - 0.04 and tuned > low
    # ... unless the configuration sets nprobe explicitly
    with FaissStore(tmp_path / "s", index_options={"nprobe": 2}) as explicit:
        assert explicit.info().extra["search_params"]["nprobe"] == 2


def test_tune_hnsw_store(tmp_path: Path) -> None:
    x = clustered(2000, seed=1)
    with make_store(tmp_path / "s", "hnsw", {"M": 8, "efConstruction": 40, "merge_min": 0}, x) as store:
        result = tune_search(store, None, 0.98, n_queries=300)
        assert result.parameter == "efSearch" and result.reached and result.recall_at_1 >= 0.98
        assert store.info().extra["search_params"]["efSearch"] == result.value


def test_tune_vectors_builds_an_index_in_memory() -> None:
    x = clustered(3000, seed=2)
    result = tune_search(x, None, 0.95, n_queries=200, index="ivf_pq", index_options={"nlist": 16, "nbits": 6})
    assert result.parameter == "nprobe" and result.reached and result.recall_at_1 >= 0.95
    assert result.extra["nlist"] == 16 and result.n_vectors == 3000
    # explicit queries are used as given
    q = perturbed_queries(x[:50], 0.9, np.random.default_rng(3))
    explicit = tune_search(x, q, 0.9, index="ivf_flat", index_options={"nlist": 16})
    assert explicit.n_queries == 50 and explicit.query_similarity is None and explicit.reached


def test_nothing_to_tune_on_exact_stores(tmp_path: Path) -> None:
    x = clustered(300, seed=4)
    with make_store(tmp_path / "flat", "flat", {}, x) as store:
        assert tune_search(store).parameter is None
    with make_store(tmp_path / "ivf", "ivf_flat", {}, x) as store:  # below train_min: exact search
        result = tune_search(store)
        assert result.parameter is None and "not built yet" in result.note
    assert tune_search(x, index="flat_fp16").parameter is None


def test_perturbed_queries_have_the_requested_similarity() -> None:
    x = clustered(100, seed=5)
    q = perturbed_queries(x, 0.7, np.random.default_rng(0))
    np.testing.assert_allclose((q * x).sum(axis=1), 0.7, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)


def test_index_tune_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from id2_plugin.cli import cli, load_commands

    x = clustered(2000, seed=6)
    make_store(tmp_path / "s", "ivf_flat", {"nlist": 16, "merge_min": 0}, x).close()
    load_commands()
    runner = CliRunner()
    res = runner.invoke(
        cli, ["index", "tune", "--store", str(tmp_path / "s"), "--queries", "200", "--target-recall", "0.95"]
    )
    assert res.exit_code == 0, res.output
    assert "chosen nprobe=" in res.output and "saved to the store" in res.output
    info = runner.invoke(cli, ["index", "info", "--store", str(tmp_path / "s"), "--json"])
    assert '"tuned": {"parameter": "nprobe"' in info.output
    missing = runner.invoke(cli, ["index", "tune", "--store", str(tmp_path / "nope")])
    assert missing.exit_code == 3 and "no reference store" in missing.output
    compact = runner.invoke(cli, ["index", "compact", "--store", str(tmp_path / "s"), "--rebuild"])
    assert compact.exit_code == 0 and compact.output.startswith("rebuild;"), compact.output


@pytest.mark.parametrize("bad", [0.0, 1.5])
def test_target_recall_is_validated(bad: float) -> None:
    from id2_plugin.errors import ConfigError

    with pytest.raises(ConfigError, match="target_recall"):
        tune_search(clustered(100), target_recall=bad)
