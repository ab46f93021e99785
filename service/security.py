"""Optional API-key authentication, declared with FastAPI's security helpers.

With no key configured every route is open. With keys, every ``/v1`` route except health
needs one, sent as ``X-API-Key: KEY`` (:data:`api_key_header`) or ``Authorization: Bearer
KEY`` (:data:`bearer`); both schemes appear in the OpenAPI document. Keys are compared in
constant time. The web page asks for the key and sends it the same way. ``/metrics`` needs a
key too unless ``metrics_public`` is set.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.deps import State, state_of

api_key_header = APIKeyHeader(name="X-API-Key", scheme_name="ApiKey", auto_error=False,
                              description="API key (when the server has keys)")
bearer = HTTPBearer(scheme_name="Bearer", auto_error=False,
                    description="`Authorization: Bearer KEY`, alternative to X-API-Key")

ApiKeyHeader = Annotated[str | None, Security(api_key_header)]
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def key_matches(candidate: str, keys: frozenset[str]) -> bool:
    """True if ``candidate`` equals one of ``keys`` (constant time in the key contents)."""
    ok = False
    for key in keys:  # no early exit: timing does not tell which key (or whether) matched
        ok |= hmac.compare_digest(candidate.encode(), key.encode())
    return ok


def check_key(keys: frozenset[str], x_api_key: str | None,
              credentials: HTTPAuthorizationCredentials | None) -> None:
    """401 when ``keys`` is not empty and neither header carries one of them."""
    if not keys:
        return
    candidate = x_api_key
    if not candidate and credentials is not None:
        candidate = credentials.credentials.strip()
    if not candidate:
        raise HTTPException(401, "this server requires an API key: send it as the X-API-Key "
                                 "header or 'Authorization: Bearer KEY'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not key_matches(candidate, keys):
        raise HTTPException(401, "the API key is not valid for this server",
                            headers={"WWW-Authenticate": "Bearer"})


async def require_api_key(state: State, x_api_key: ApiKeyHeader = None,
                          credentials: BearerCredentials = None) -> None:
    """401 when keys are configured and the request carries none / a wrong one."""
    check_key(state.api_keys, x_api_key, credentials)


async def require_metrics_access(request: Request, x_api_key: ApiKeyHeader = None,
                                 credentials: BearerCredentials = None) -> None:
    """``/metrics``: the API key unless ``metrics_public`` (e.g. a scraper on a private
    network)."""
    if not request.app.state.settings.metrics_public:
        check_key(state_of(request).api_keys, x_api_key, credentials)


ApiKey = Annotated[None, Depends(require_api_key)]
"""Add ``_: ApiKey`` to a route, or ``dependencies=[Depends(require_api_key)]`` to a router."""
