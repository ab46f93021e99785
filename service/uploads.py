"""Reading an uploaded file's bytes with a hard size limit (413 beyond it)."""

from __future__ import annotations

from fastapi import HTTPException, UploadFile

CHUNK = 1 << 20


async def read_upload(file: UploadFile, max_bytes: int) -> bytes:
    """All bytes of ``file``; 413 as soon as more than ``max_bytes`` arrive, 422 if empty.

    The body limit of the app already stops oversized requests; this check names the file
    and also holds when the multipart part is smaller than the body but over the limit.
    """
    parts: list[bytes] = []
    size = 0
    while chunk := await file.read(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"{file.filename or 'upload'}: file larger than the "
                                     f"limit of {max_bytes} bytes "
                                     f"(SPECSEARCH_MAX_UPLOAD_BYTES); send a smaller file")
        parts.append(chunk)
    if size == 0:
        raise HTTPException(422, f"{file.filename or 'upload'}: empty upload (0 bytes)")
    return b"".join(parts)
