"""Robustness suite: how identification holds up under common image attacks.

* :mod:`.attacks`: seeded, parameterised attacks (JPEG, blur, downscale, crop, text/logo watermarks,
  chains) and :func:`default_suite`; more attacks come from plugins through ``id2_register_attacks``.
* :mod:`.suite`: :func:`run_robustness` attacks the queries at every level and scores id2, raw VAE,
  PDQ and pHash with :mod:`id2_plugin.evaluate`; its parts are the data sets (:mod:`.datasets`), the
  methods and series (:mod:`.methods`), the query loop (:mod:`.levels`), the results (:mod:`.results`)
  and the provenance (:mod:`.provenance`).
* :mod:`.report`: ``report.json``, ``curves.csv``, a self-contained ``report.html`` and ``report.pdf``.

Command line: ``id2-plugin robustness --photos DIR --out DIR`` (see ``--help``).
"""

from __future__ import annotations

from .attacks import (
    BUILTIN_ATTACKS,
    DEFAULT_LEVELS,
    JPEG,
    Attack,
    Border,
    Canvas,
    Chain,
    Crop,
    Downscale,
    FunctionAttack,
    GaussianBlur,
    Identity,
    LogoWatermark,
    Mirror,
    Rotate,
    SuiteEntry,
    TextWatermark,
    default_suite,
    parse_attack_spec,
    subsample_levels,
)
from .datasets import RobustnessSet, pairs_set, photos_set
from .levels import attack_seed
from .methods import build_methods
from .report import render_html, result_to_dict, write_csv, write_html, write_json, write_pdf, write_reports
from .results import CurvePoint, FailureExample, RobustnessResult
from .suite import run_robustness

__all__ = [
    "BUILTIN_ATTACKS",
    "DEFAULT_LEVELS",
    "JPEG",
    "Attack",
    "Chain",
    "Border",
    "Canvas",
    "Crop",
    "CurvePoint",
    "Downscale",
    "FailureExample",
    "FunctionAttack",
    "GaussianBlur",
    "Identity",
    "LogoWatermark",
    "Mirror",
    "RobustnessResult",
    "RobustnessSet",
    "Rotate",
    "SuiteEntry",
    "TextWatermark",
    "attack_seed",
    "build_methods",
    "default_suite",
    "pairs_set",
    "parse_attack_spec",
    "photos_set",
    "render_html",
    "result_to_dict",
    "run_robustness",
    "subsample_levels",
    "write_csv",
    "write_html",
    "write_json",
    "write_pdf",
    "write_reports",
]
