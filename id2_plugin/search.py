"""The built-in search: embed the query (every orientation variant in one pass), query the store, re-score the
candidates with the decision model, take the query windows' second look where it can change the decision,
and decide against the threshold."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .decision import FUSED, WINDOW_SIGNAL, Evidence, candidate_background, check_rankings, window_rankings
from .errors import Id2Error, MediaError
from .framing import (
    best_over_orientations,
    best_over_windows,
    needs_second_look,
    orient,
    orientation_variants,
    query_windows,
)
from .identify_context import IdentifyContext
from .media import MediaLike, describe
from .types import Match, OriginReport, PairDecision

if TYPE_CHECKING:
    from .embedders.base import ImageEmbedder
    from .stores.base import ReferenceStore


class Candidates(NamedTuple):
    """One query's candidates: the matches, the query vector each came from (a row per match, or one row for
    all), and with a decision model the query's background (each signal's median cosine over the first
    ranking's candidates), which the second look keeps."""

    matches: list[Match]
    vectors: np.ndarray
    background: Mapping[str, float] | None = None


def _or_error(fn: Any, media: MediaLike) -> Any:
    try:
        return fn(media)
    except MediaError as exc:
        return exc


def with_signal_scores(
    embedder: ImageEmbedder, store: ReferenceStore, vector: Any, matches: list[Match]
) -> list[Match]:
    """``matches`` with each signal's own cosine attached, when the embedding has several signals.

    ``vector`` is the query's embedding, or one row per match (the query variant each match came from).
    """
    if len(embedder.signals) < 2 or not matches:
        return matches
    refs = store.fetch_vectors([m.reference_id for m in matches])
    if refs is None:
        return matches
    queries = np.broadcast_to(np.atleast_2d(vector), (len(matches), refs.shape[1]))
    per = [embedder.signal_scores(q, r[None])[0] for q, r in zip(queries, refs)]
    return [dataclasses.replace(m, signals=tuple(s.items())) for m, s in zip(matches, per)]


def _best_of_variants(
    variants: list[tuple[int, bool]], per_variant: list[list[Match]], vecs: np.ndarray, k: int
) -> tuple[list[Match], np.ndarray]:
    """Top matches over one query's orientation variants (best score per reference) and the vector each came from."""
    if len(variants) == 1:
        return per_variant[0], vecs[0]
    ranked = best_over_orientations(per_variant, variants, k)
    return [m for m, _ in ranked], vecs[[vi for _, vi in ranked]]


def search(media: MediaLike, context: IdentifyContext) -> OriginReport:
    """The built-in identification: normalise, embed, query the store, decide against the threshold."""
    report = search_many([media], context)[0]
    if isinstance(report, MediaError):
        raise report
    return report


def search_many(media: Sequence[MediaLike], context: IdentifyContext) -> list[OriginReport | MediaError]:
    """:func:`search` for a batch: one forward pass and one store query for every usable query."""
    t0 = time.perf_counter()
    images = [_or_error(context.embedder.normalise, m) for m in media]
    ok = [i for i, im in enumerate(images) if not isinstance(im, MediaError)]
    normalise_ms = (time.perf_counter() - t0) * 1e3 / max(len(ok), 1)
    out: list[Any] = list(images)  # errors stay; the usable ones are replaced by their reports below
    reports = search_normalised([media[i] for i in ok], [images[i] for i in ok], context, normalise_ms) if ok else []
    for i, report in zip(ok, reports):
        out[i] = report
    return out


def search_normalised(
    media: Sequence[MediaLike], images: Sequence[np.ndarray], context: IdentifyContext, normalise_ms: float = 0.0
) -> list[OriginReport]:
    """The reports for already normalised queries (``media`` names them): one forward pass, one store query.

    ``normalise_ms`` is the decoding time per query, reported in the timings (in a pipelined stream it ran
    beside the model, so ``total`` overstates the wall time a query adds).
    """
    t1 = time.perf_counter()
    # Every orientation variant of every query in one forward pass and one store query.
    variants = orientation_variants(context.rotations, context.mirror)
    nv = len(variants)
    vecs = context.embedder.embed_arrays(np.stack([orient(im, r, m) for im in images for r, m in variants]))
    t2 = time.perf_counter()
    found = _store_candidates(context, vecs, context.rankings)
    t3 = time.perf_counter()
    share = 1e3 / len(images)  # a batch's time, shared equally by its queries
    timings = {
        "normalise": normalise_ms,
        "embed": (t2 - t1) * share,
        "search": (t3 - t2) * share,
        "total": normalise_ms + (t3 - t1) * share,
    }
    gathered = [
        _gather(variants, [f[row * nv : (row + 1) * nv] for f in found], vecs[row * nv : (row + 1) * nv], context)
        for row in range(len(images))
    ]
    if context.decision is not None:
        best = [_decided(context, matches, vectors, n_background=n0) for matches, vectors, n0 in gathered]
    else:
        best = [Candidates(matches, vectors) for matches, vectors, _ in gathered]
    best, looked, windows_ms = _second_look(images, vecs[::nv], best, context)
    fmr = _false_match_rate(context)
    return [
        _report(
            _evidence_shown(context, matches, vectors),
            context,
            _own_timings(timings, i in looked, windows_ms),
            describe(query),
            fmr,
        )
        for i, (query, (matches, vectors, _)) in enumerate(zip(media, best))
    ]


def _ranked_query(context: IdentifyContext, vecs: np.ndarray, ranking: str) -> np.ndarray:
    """``vecs`` as the store must see them to rank by ``ranking``: whole for the fused cosine, else only that
    signal's slice (the others zeroed, so that the store's inner product is that signal's weighted cosine)."""
    if ranking == FUSED:
        return vecs
    check_rankings([(ranking, 1)], list(context.embedder.signals))
    a, b, _ = context.embedder.signals[ranking]
    out = np.zeros_like(vecs)
    out[:, a:b] = vecs[:, a:b]
    return out


def _store_candidates(
    context: IdentifyContext, vecs: np.ndarray, rankings: Sequence[tuple[str, int]]
) -> list[list[list[Match]]]:
    """Per ranking, the store's top ``n`` for every row of ``vecs``."""
    return [context.store.query(_ranked_query(context, vecs, r), k=n) for r, n in rankings]


def _gather(
    variants: list[tuple[int, bool]], per_ranking: list[list[list[Match]]], vecs: np.ndarray, context: IdentifyContext
) -> tuple[list[Match], np.ndarray, int]:
    """One query's candidates over its orientation variants and the rankings, each reference once (its first
    ranking's), the vector each came from, and how many the first ranking brought (the background's)."""
    rankings = context.rankings
    if len(rankings) == 1:
        matches, vectors = _best_of_variants(variants, per_ranking[0], vecs, rankings[0][1])
        return matches, vectors, len(matches)
    out: dict[str, tuple[Match, np.ndarray]] = {}
    n_first = 0
    for i, ((_, n), found) in enumerate(zip(rankings, per_ranking)):
        matches, vectors = _best_of_variants(variants, found, vecs, n)
        rows = np.broadcast_to(np.atleast_2d(vectors), (len(matches), vecs.shape[1]))
        for m, v in zip(matches, rows):
            out.setdefault(m.reference_id, (m, v))
        if i == 0:
            n_first = len(out)
    if not out:
        return [], vecs[:0], 0
    matches, rows = zip(*out.values())
    return list(matches), np.stack(rows), n_first


def frame_search(context: IdentifyContext) -> Callable[[list[np.ndarray]], list[list[Match]]]:
    """Video frames (normalised) decided as identification decides images (orientations, decision model,
    windows): per frame, its matches at or above ``context.threshold``."""

    def search(images: list[np.ndarray]) -> list[list[Match]]:
        reports = search_normalised([describe(im) for im in images], images, context)
        return [[m for m in r.matches if m.score >= context.threshold] for r in reports]

    return search


def _own_timings(batch: dict[str, float], looked: bool, windows_ms: float) -> dict[str, float]:
    """A query's timings: the batch's shares, plus the windows' time for a query that took the second look
    (so ``"windows" in timings_ms`` says which queries paid for it)."""
    if not looked:
        return dict(batch)
    return {**batch, "windows": windows_ms, "total": batch["total"] + windows_ms}


def _false_match_rate(context: IdentifyContext) -> float | None:
    """The calibrated bound on unrelated queries reported as a match, at this store's size (None: uncalibrated
    or a threshold other than the operating point's)."""
    op = context.decision.operating_point if context.decision is not None else None
    if op is None or context.threshold != op.threshold:
        return None
    return op.per_query_fpr(context.store.info().count)


def _evidence_shown(context: IdentifyContext, matches: list[Match], vectors: np.ndarray) -> list[Match]:
    """The top ``k``; with each signal's cosine attached when the decision model did not already."""
    matches = matches[: context.k]
    if context.decision is not None:
        return matches
    return with_signal_scores(
        context.embedder, context.store, vectors[: len(matches)] if vectors.ndim == 2 else vectors, matches
    )


def decide(
    context: IdentifyContext,
    matches: list[Match],
    vectors: np.ndarray,
    windows: tuple[Sequence[str], np.ndarray] | None = None,
    background: Mapping[str, float] | None = None,
    n_background: int | None = None,
) -> tuple[list[Match], Mapping[str, float]]:
    """``matches`` re-scored by the decision model and re-ranked (each carries the decision score, the store's
    cosine and each signal's cosine), and the query's background they were scored against. ``vectors``: the
    query vector each match came from (one row, or one per match); ``windows``: the labels and vectors of the
    query's windows when they were searched; ``background``: the query's, when already known, else the median
    cosines of the first ``n_background`` matches (default all): the first ranking's candidates."""
    assert context.decision is not None
    if not matches:
        return matches, background or {}
    refs = _stored_vectors(context, matches)
    rows = np.broadcast_to(np.atleast_2d(vectors), (len(matches), refs.shape[1]))
    cos = _cosines(context, refs, rows)
    if not background:  # none yet (or none: a second look whose whole image found nothing)
        background = _background(cos, n_background)
    scores, label = _rescore(context, refs, cos, windows, background)
    order = np.argsort(-scores, kind="stable")
    fused = sum(w * cos[name] for name, (_, _, w) in context.embedder.signals.items())
    decided = [
        dataclasses.replace(
            matches[i],
            rank=r + 1,
            score=float(scores[i]),
            cosine=round(float(fused[i]), 6),
            window=label[i] or matches[i].window,
            signals=tuple((name, round(float(c[i]), 6)) for name, c in cos.items()),
        )
        for r, i in enumerate(order)
    ]
    return decided, background


def _stored_vectors(context: IdentifyContext, matches: Sequence[Match]) -> np.ndarray:
    refs = context.store.fetch_vectors([m.reference_id for m in matches])
    if refs is None:
        raise Id2Error(
            f"the {type(context.store).__name__} store cannot return stored vectors, which the decision "
            "model needs; set match.decision: cosine"
        )
    return refs


def _cosines(context: IdentifyContext, refs: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Each signal's cosine between each query row and the reference row beside it."""
    return {
        name: np.einsum("ij,ij->i", refs[:, a:b], rows[:, a:b]) / max(w, 1e-12)
        for name, (a, b, w) in context.embedder.signals.items()
    }


def _background(cos: Mapping[str, np.ndarray], n: int | None = None) -> dict[str, float]:
    """The query's background: each signal's median cosine over its first ``n`` candidates (default all)."""
    return {name: float(b[0]) for name, b in candidate_background({k: c[None, :n] for k, c in cos.items()}).items()}


def _rescore(
    context: IdentifyContext,
    refs: np.ndarray,
    cos: Mapping[str, np.ndarray],
    windows: tuple[Sequence[str], np.ndarray] | None,
    background: Mapping[str, float],
) -> tuple[np.ndarray, list[str]]:
    """The decision score of each reference row from its cosines (``cos``), the windows' evidence and the
    query's background, and the label of the window whose evidence beat the whole image's ("" none)."""
    assert context.decision is not None
    slices = context.embedder.signals
    window_cos, label = None, [""] * len(refs)
    if windows is not None and WINDOW_SIGNAL in slices:
        a, b, w = slices[WINDOW_SIGNAL]
        per_window = refs[:, a:b] @ windows[1][:, a:b].T / max(w, 1e-12)
        window_cos = per_window.max(axis=1)
        best_window = per_window.argmax(axis=1)
        label = [windows[0][j] if window_cos[i] > cos[WINDOW_SIGNAL][i] else "" for i, j in enumerate(best_window)]
    evidence = Evidence(cos, window_cos, {name: np.full(len(refs), v) for name, v in background.items()})
    return context.decision.score(evidence), label


def decide_pair(
    context: IdentifyContext, image: np.ndarray, reference: np.ndarray, *, query_vector: np.ndarray | None = None
) -> PairDecision:
    """The decision on one (query, reference) pair as identification takes it against ``context.store``:
    the query's background from its store candidates, the windows' evidence when identification would search
    them (``match.windows`` and the window floor), the reference scored as one more candidate. ``image``: the
    normalised query (upright); ``reference``: the reference's embedding; ``query_vector``: the query's, when
    the caller has it (else it is embedded here)."""
    if context.decision is None:
        raise Id2Error("a store decision needs a decision model (match.decision is cosine)")
    query = context.embedder.embed_arrays(image[None])[0] if query_vector is None else query_vector
    found, _, n_first = _gather(
        [(0, False)], [[f[0]] for f in _store_candidates(context, query[None], context.rankings)], query[None], context
    )
    refs = _stored_vectors(context, found) if found else np.zeros((0, len(query)), np.float32)
    cos = _cosines(context, refs, np.broadcast_to(query, refs.shape))
    background = _background(cos, n_first)
    best = float(_rescore(context, refs, cos, None, background)[0].max()) if found else None
    windows = None
    if needs_second_look(context.windows, best, context.threshold, context.window_floor):
        labels, vecs = _window_vectors(context, [image], query[None])
        windows = (labels[0], vecs)
    reference = np.asarray(reference, np.float32)
    rows = np.concatenate([refs, reference[None]])
    own = _cosines(context, reference[None], query[None])
    scores, label = _rescore(context, rows, {k: np.append(c, own[k]) for k, c in cos.items()}, windows, background)
    # the reference itself may be stored: its own row does not outrank it
    others = [(m, float(sc)) for m, sc, r in zip(found, scores, refs) if float(r @ reference) < 0.9999]
    ahead = [(m, sc) for m, sc in others if sc > scores[-1]]
    top = max(others, key=lambda o: o[1], default=None)
    return PairDecision(
        score=float(scores[-1]),
        threshold=context.threshold,
        window=label[-1],
        windows_searched=windows is not None,
        rank=len(ahead) + 1,
        candidates=len(found),
        best_other=None if top is None else dataclasses.replace(top[0], score=top[1]),
    )


def _window_vectors(
    context: IdentifyContext, images: Sequence[np.ndarray], upright: np.ndarray
) -> tuple[list[list[str]], np.ndarray]:
    """The query windows of each image (normalised, upright) and their vectors in one embedding pass, the
    windows of one image after another; ``upright``: the whole images' vectors."""
    labels, crops = zip(*(query_windows(image) for image in images))
    whole = np.concatenate([np.repeat(u[None], len(c), axis=0) for u, c in zip(upright, crops)])
    return list(labels), context.embedder.embed_windows(np.concatenate(crops), whole)


def _second_look(
    images: Sequence[np.ndarray],
    upright: np.ndarray,
    best: list[Candidates],
    context: IdentifyContext,
) -> tuple[list[Candidates], set[int], float]:
    """Search the query windows of every upright query the whole image did not match (``match.windows``):
    one embedding pass and one store query per ranking the windows can change (the fused cosine's and the
    window signal's) for all of them. With a decision model, only queries whose score is at least its window
    floor are looked at again, and every candidate is re-scored with the windows' evidence; with the cosine,
    each reference keeps its best score."""
    todo = [
        i
        for i, (matches, _, _) in enumerate(best)
        if needs_second_look(
            context.windows, matches[0].score if matches else None, context.threshold, context.window_floor
        )
    ]
    if not todo:
        return best, set(), 0.0
    t0 = time.perf_counter()
    labels, vecs = _window_vectors(context, [images[i] for i in todo], upright[todo])
    per_ranking = _store_candidates(context, vecs, window_rankings(context.rankings))
    found = [[m for f in per_ranking for m in f[row]] for row in range(len(vecs))]
    out = list(best)
    for j, i in enumerate(todo):
        nw = len(labels[j])
        window_found, window_vecs = found[j * nw : (j + 1) * nw], vecs[j * nw : (j + 1) * nw]
        if context.decision is not None:
            out[i] = _decide_with_windows(context, best[i], upright[i], window_found, (labels[j], window_vecs))
        else:
            out[i] = _merge_windows(context, best[i], window_found, labels[j], window_vecs)
    return out, set(todo), (time.perf_counter() - t0) * 1e3 / len(todo)


def _decided(
    context: IdentifyContext,
    matches: list[Match],
    vectors: np.ndarray,
    windows: tuple[Sequence[str], np.ndarray] | None = None,
    background: Mapping[str, float] | None = None,
    n_background: int | None = None,
) -> Candidates:
    """:func:`decide`, with the query vector each re-ranked match came from kept beside it."""
    rows = np.broadcast_to(np.atleast_2d(vectors), (len(matches), np.atleast_2d(vectors).shape[1]))
    came_from = {m.reference_id: r for m, r in zip(matches, rows)}
    decided, background = decide(context, matches, rows, windows, background, n_background)
    vectors = np.stack([came_from[m.reference_id] for m in decided]) if decided else rows[:0]
    return Candidates(decided, vectors, background)


def _decide_with_windows(
    context: IdentifyContext,
    best: Candidates,
    upright: np.ndarray,
    window_found: Sequence[Sequence[Match]],
    windows: tuple[Sequence[str], np.ndarray],
) -> Candidates:
    """The whole image's candidates and the windows' new ones, all re-scored with the windows' evidence
    against the whole image's background."""
    matches, vectors, background = best
    rows = np.broadcast_to(np.atleast_2d(vectors), (len(matches), len(upright)))
    seen = {m.reference_id for m in matches}
    extra = list({m.reference_id: m for ms in window_found for m in ms if m.reference_id not in seen}.values())
    candidates = [*matches, *(dataclasses.replace(m, window="") for m in extra)]
    all_rows = np.concatenate([rows, np.repeat(upright[None], len(extra), axis=0)])
    return _decided(context, candidates, all_rows, windows, background, n_background=len(matches))


def _merge_windows(
    context: IdentifyContext,
    best: Candidates,
    window_found: Sequence[Sequence[Match]],
    labels: Sequence[str],
    window_vecs: np.ndarray,
) -> Candidates:
    """Each reference's best cosine over the whole query and its windows (the cosine decision)."""
    matches, whole_vectors, _ = best
    rows = np.atleast_2d(whole_vectors)
    came_from = {m.reference_id: rows[0 if len(rows) == 1 else r] for r, m in enumerate(matches)}
    ranked = best_over_windows(matches, window_found, labels, context.k)
    vectors = [window_vecs[wi] if wi >= 0 else came_from[m.reference_id] for m, wi in ranked]
    return Candidates([m for m, _ in ranked], np.stack(vectors) if vectors else rows[:0])


def _report(
    matches: list[Match],
    context: IdentifyContext,
    timings: dict[str, float],
    query: str,
    false_match_rate: float | None,
) -> OriginReport:
    best = matches[0].score if matches else float("-inf")
    return OriginReport(
        score_kind="decision" if context.decision is not None else "cosine",
        false_match_rate=false_match_rate,
        matches=tuple(matches),
        is_match=bool(matches) and best >= context.threshold,
        threshold=context.threshold,
        embedder=context.embedder.identity,
        projection=context.embedder.projection_id,
        timings_ms=timings,
        query=query,
    )
