"""Moved to :mod:`id2_plugin.pairs` (the manifest is used by evaluation, calibration and fusion too); this
alias keeps old imports working."""

from ..pairs import ManifestError, Pair, group_by_origin, load_pairs, manifest_digest, write_pairs

__all__ = ["ManifestError", "Pair", "group_by_origin", "load_pairs", "manifest_digest", "write_pairs"]
