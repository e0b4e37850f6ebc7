"""Evaluation sets from files: a pairs manifest (or several) and distractor folders -> queries, references
and the ground truth, decoded and normalised once, unreadable files reported and skipped."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._files import sha256_file_or_none
from .errors import MediaError
from .media import iter_image_files, scan_image_files

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """Normalised images of an evaluation set, with what was skipped and why."""

    queries: list[np.ndarray]
    references: list[np.ndarray]
    positives: np.ndarray
    query_paths: list[Path]
    reference_paths: list[Path]
    #: human-readable reasons, one per skipped file or query
    skipped: list[str]


def manifest_list(manifest: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str | os.PathLike]:
    """One pairs manifest or several, as a list (several are pooled by the functions that take them)."""
    return [manifest] if isinstance(manifest, (str, os.PathLike)) else list(manifest)


def load_pairs_for_eval(
    manifest: str | os.PathLike | Sequence[str | os.PathLike],
    distractors: Sequence[str | os.PathLike] = (),
    max_distractors: int | None = None,
) -> tuple[list[Path], list[Path], np.ndarray]:
    """Queries, references and ground truth from a pairs manifest (or several, pooled) plus distractor folders/files.

    References are the manifest's distinct origins and twins (in order of first appearance) followed by the
    distractor images; a query's origin and its ``twins`` (near-identical copies) are all correct answers.
    Origins with identical bytes are one reference (the first file named): two files of one photo would
    otherwise tie and a pessimistic tie turns the correct answer into a miss. A distractor whose bytes equal
    an origin or a query is dropped (with a log warning): it would be an unlabelled copy and turn a correct
    answer into a "wrong" one. Manifest errors (malformed line, missing file) raise
    :class:`~id2_plugin.errors.ConfigError` naming the line. ``max_distractors`` keeps the first N
    distractors kept (folders in sorted order): a reproducible subset.
    """
    from .pairs import load_pairs

    manifests = manifest_list(manifest)
    pairs = [p for m in manifests for p in load_pairs(m)]
    queries: list[Path] = []
    q_index: dict[Path, int] = {}
    references: list[Path] = []
    r_index: dict[Path, int] = {}
    by_digest: dict[str, int] = {}
    links: list[tuple[int, int]] = []

    def reference(path: Path) -> int:
        if path not in r_index:
            digest = sha256_file_or_none(path)
            if digest is not None and digest in by_digest:
                r_index[path] = by_digest[digest]
            else:
                r_index[path] = len(references)
                references.append(path)
                if digest is not None:
                    by_digest[digest] = r_index[path]
        return r_index[path]

    for pair in pairs:
        if pair.query not in q_index:
            q_index[pair.query] = len(queries)
            queries.append(pair.query)
        links += [(q_index[pair.query], reference(o)) for o in (pair.origin, *pair.twins)]
    known = {h for h in (sha256_file_or_none(p) for p in queries) if h} | set(by_digest)
    dropped = 0
    n_origins = len(references)
    for path in iter_image_files(list(distractors)):
        if max_distractors is not None and len(references) - n_origins >= max_distractors:
            break
        path = path.resolve()
        if path in r_index or path in q_index:
            dropped += 1
            continue
        digest = sha256_file_or_none(path)
        if digest is not None and digest in known:
            dropped += 1
            continue
        if digest is not None:
            known.add(digest)
        r_index[path] = len(references)
        references.append(path)
    if dropped:
        log.warning("dropped %d distractor(s) identical to a query, an origin or another distractor", dropped)
    positives = np.zeros((len(queries), len(references)), dtype=bool)
    for qi, ri in links:
        positives[qi, ri] = True
    return queries, references, positives


def query_labels(
    manifest: str | os.PathLike | Sequence[str | os.PathLike], query_paths: Sequence[Path], key: str
) -> list[str | None]:
    """Per query the manifest's ``key`` (``source``, ``family``, ``model``) of its first pair (None if absent)."""
    from .pairs import load_pairs

    found: dict[Path, str | None] = {}
    manifests = manifest_list(manifest)
    for pair in (p for m in manifests for p in load_pairs(m)):
        value = getattr(pair, key, None) if key in ("source", "model", "prompt") else pair.extra.get(key)
        found.setdefault(pair.query, None if value is None else str(value))
    return [found.get(Path(q)) for q in query_paths]


def load_images(
    paths: Sequence[Path], normalise: Callable[[Path], np.ndarray], progress: bool | str = False
) -> tuple[list[np.ndarray], list[int], list[MediaError]]:
    """Normalise ``paths`` (decoded in threads, in order); unreadable ones are skipped. Returns (images, kept
    indices, errors)."""
    from ._batching import prefetch
    from ._progress import progress_bar

    images, kept, errors = [], [], []
    with progress_bar(progress, len(paths), "loading", leave=False) as bar:
        for done, image in prefetch(paths, normalise, depth=32):
            if done.error is not None:
                errors.append(done.error)
            else:
                images.append(image)
                kept.append(done.index)
            bar.update(1)
    return images, kept, errors


def prepare_eval_set(
    query_paths: Sequence[Path],
    reference_paths: Sequence[Path],
    positives: np.ndarray,
    normalise: Callable[[Path], np.ndarray],
    progress: bool = True,
) -> EvalSet:
    """Decode and normalise every image once, skipping unreadable files.

    An unreadable reference is removed from the set; a query whose every origin was unreadable is removed
    too (it would otherwise silently become a "no origin" query). Reasons are listed in ``skipped``.
    """
    q_imgs, q_kept, q_err = load_images(query_paths, normalise, "loading queries" if progress else False)
    r_imgs, r_kept, r_err = load_images(reference_paths, normalise, "loading references" if progress else False)
    skipped = [f"unreadable, skipped: {e}" for e in [*q_err, *r_err]]
    pos = positives[np.ix_(q_kept, r_kept)] if q_kept and r_kept else np.zeros((len(q_kept), len(r_kept)), bool)
    had_origin = positives[q_kept].any(axis=1) if q_kept else np.zeros(0, bool)
    keep = ~had_origin | pos.any(axis=1)
    for j in np.flatnonzero(~keep):
        skipped.append(f"query {query_paths[q_kept[j]]} skipped: its origin could not be read")
    q_final = [q_kept[j] for j in np.flatnonzero(keep)]
    return EvalSet(
        queries=[q_imgs[j] for j in np.flatnonzero(keep)],
        references=r_imgs,
        positives=pos[keep],
        query_paths=[query_paths[i] for i in q_final],
        reference_paths=[reference_paths[i] for i in r_kept],
        skipped=skipped,
    )


def scan_folders(paths: Sequence[str | os.PathLike], report: Callable[[str], None]) -> tuple[list[Path], list[str]]:
    """The image files under ``paths`` (folders recurse; no image at all is not an error), and each path that
    could not be walked (an unreadable folder, a dangling link, a symlink loop) as a ``skipped ...`` line,
    passed to ``report`` as found."""
    scan = scan_image_files(list(paths))
    problems = [f"skipped {line}" for line in scan.problems]
    for line in problems:
        report(line)
    return scan.files, problems
