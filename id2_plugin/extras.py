"""Optional dependencies, for built-in and third-party code alike: :func:`require` imports a module of an
extra (torch, faiss, onnxruntime, fastapi, ray, ...) or raises :class:`~id2_plugin.MissingExtraError`
naming the ``pip install 'id2-plugin[extra]'`` that provides it."""

from ._lazy import require

__all__ = ["require"]
