"""Reading the images of an HTTP request: a multipart form or the raw body, refused with 400 / 422 as such.

The size and time budgets of the body are enforced before these run (:mod:`._http_admission`); these only
take the images out of what arrived and say precisely what is missing.
"""

from __future__ import annotations

from fastapi import HTTPException, Request
from starlette.datastructures import FormData, UploadFile

__all__ = ["read_pair", "read_uploads"]


async def read_uploads(request: Request, *, many: bool) -> tuple[list[tuple[str, bytes]], list[str]]:
    """``[(name, bytes)]`` from a multipart form (field ``file``) or the raw body, plus form labels."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return [("upload", await request.body())], []
    form = await _form(request, max_files=1000 if many else 1, max_fields=100)
    files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
    if not files:
        raise HTTPException(422, "multipart upload needs a 'file' field holding the image")
    if len(files) > 1 and not many:
        raise HTTPException(422, "send one image per request to /v1/identify")
    out = [(f.filename or f"upload-{i}", await f.read()) for i, f in enumerate(files)]
    labels = [str(x) for x in form.getlist("label") if isinstance(x, str)]
    await form.close()
    return out, labels


async def read_pair(request: Request) -> tuple[bytes, bytes]:
    """The ``query`` and ``reference`` files of a multipart form (``/v1/explain``)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(422, "send a multipart form with the files 'query' and 'reference'")
    form = await _form(request, max_files=2, max_fields=10)
    files = [form.get(name) for name in ("query", "reference")]
    if not all(isinstance(f, UploadFile) for f in files):
        raise HTTPException(422, "multipart upload needs the files 'query' and 'reference'")
    data = [await f.read() for f in files]  # type: ignore[union-attr]
    await form.close()
    if not all(data):
        raise HTTPException(422, "empty upload: send both images' bytes")
    return data[0], data[1]


async def _form(request: Request, *, max_files: int, max_fields: int) -> FormData:
    """The parsed multipart form; 400 when it is malformed."""
    try:
        return await request.form(max_files=max_files, max_fields=max_fields)
    except HTTPException:
        raise
    except Exception as exc:  # malformed multipart bodies raise parser-specific errors
        raise HTTPException(400, f"malformed multipart body: {exc}") from None
