"""Optional API-key authentication.

With no key configured every route is open. With keys, every ``/v1`` route except health
needs one, sent as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``; keys are compared in
constant time. The web page asks for the key and sends it the same way.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException

from service.deps import State

def key_matches(candidate: str, keys: frozenset[str]) -> bool:
    """True if ``candidate`` equals one of ``keys`` (constant time in the key contents)."""
    ok = False
    for key in keys:  # no early exit: timing does not tell which key (or whether) matched
        ok |= hmac.compare_digest(candidate.encode(), key.encode())
    return ok


async def require_api_key(
    state: State,
    x_api_key: Annotated[str | None, Header(description="API key (if the server has keys)")]
    = None,
    authorization: Annotated[str | None, Header(description="`Bearer KEY`, alternative to "
                                                            "X-API-Key")] = None,
) -> None:
    """401 when keys are configured and the request carries none / a wrong one."""
    keys = state.api_keys
    if not keys:
        return
    candidate = x_api_key
    if candidate is None and authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            candidate = value.strip()
    if not candidate:
        raise HTTPException(401, "this server requires an API key: send it as the X-API-Key "
                                 "header or 'Authorization: Bearer KEY'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not key_matches(candidate, keys):
        raise HTTPException(401, "the API key is not valid for this server",
                            headers={"WWW-Authenticate": "Bearer"})


ApiKey = Annotated[None, Depends(require_api_key)]
"""Add ``_: ApiKey`` to a route, or ``dependencies=[Depends(require_api_key)]`` to a router."""
