"""Bearer tokens (JWT, HS256, PyJWT) carrying who acts: user id, role and unit.

Authorisation itself is a domain rule (services/cases/domain); this module only proves identity
and hands a ``Principal`` to the handlers.
"""

from __future__ import annotations

import functools
import time
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.http import ProblemError
from shared.reference.staff import Role, StaffDirectory, StaffMember
from shared.settings import Settings, get_settings

_ROLES = frozenset(Role)


class Principal(BaseModel):
    """The authenticated caller."""

    model_config = ConfigDict(frozen=True)
    user_id: str
    role: str
    unit: str
    name: str | None = None


def mint_token(principal: Principal, settings: Settings, *, ttl_s: int | None = None) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": principal.user_id, "role": principal.role, "unit": principal.unit,
        "iss": settings.jwt_issuer, "iat": now, "exp": now + (ttl_s or settings.jwt_ttl_s),
    }
    if principal.name:
        claims["name"] = principal.name
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def decode_token(token: str, settings: Settings) -> Principal:
    """Verify signature, issuer, expiry and that the role is one of ours; raise
    ``ProblemError`` (401) otherwise.

    A token whose signature was verified once is remembered (the same officer sends the same
    token all day); its expiry is still checked on every use."""
    try:
        principal, expires = _verified(token, settings.jwt_secret, settings.jwt_issuer)
        if expires <= time.time():
            raise jwt.ExpiredSignatureError("Signature has expired")
    except (jwt.PyJWTError, ValidationError) as exc:
        raise ProblemError(401, "Not authenticated", f"bearer token refused: {exc}",
                           headers={"WWW-Authenticate": "Bearer"},
                           errors=[{"field": "header:Authorization",
                                    "message": f"bearer token refused: {exc}"}]) from exc
    # validly signed, yet no role we know: the handlers take every role for a Role (a 500)
    if principal.role not in _ROLES:
        raise ProblemError(401, "Not authenticated", "bearer token refused: unknown role",
                           headers={"WWW-Authenticate": "Bearer"},
                           errors=[{"field": "token:role",
                                    "message": f"unknown role {principal.role!r}"}])
    return principal


@functools.lru_cache(maxsize=20_000)
def _verified(token: str, secret: str, issuer: str) -> tuple[Principal, float]:
    claims = jwt.decode(token, secret, algorithms=["HS256"], issuer=issuer,
                        options={"require": ["sub", "role", "unit", "exp", "iss"]})
    principal = Principal(user_id=claims["sub"], role=claims["role"], unit=claims["unit"],
                          name=claims.get("name"))
    return principal, float(claims["exp"])


_bearer = HTTPBearer(auto_error=False)
# Dependencies are coroutines on purpose: FastAPI runs plain functions in a thread pool, a
# thread hop per dependency per request.


def settings_of(request: Request) -> Settings:
    return settings_of_app(request.app)


def settings_of_app(app: Any) -> Settings:
    """The app's settings (``app.state.settings``), else the environment's."""
    settings = getattr(app.state, "settings", None)
    return settings if isinstance(settings, Settings) else get_settings()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header value, else None (as ``HTTPBearer``
    reads it: the scheme in any case, the credentials stripped)."""
    scheme, _, credentials = (authorization or "").partition(" ")
    credentials = credentials.strip()
    if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
        return None
    return credentials


async def require_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise ProblemError(401, "Not authenticated", "a bearer token is required",
                           headers={"WWW-Authenticate": "Bearer"},
                           errors=[{"field": "header:Authorization",
                                    "message": "a bearer token is required"}])
    return decode_token(credentials.credentials, settings_of(request))


CurrentPrincipal = Annotated[Principal, Depends(require_principal)]


def require_staff(who: Principal, staff: StaffDirectory) -> StaffMember:
    """The staff member ``who`` is, for a read: a token proves who signed it, not that its
    claims still hold, so reads check them against the directory as commands do (cases'
    ``check_actor``). A system identity, a user the directory does not know, or a role or unit
    that is not theirs is a 403 naming the claim."""
    if who.role == Role.SYSTEM:
        raise ProblemError(403, "Not a person", "system identities do not read over HTTP",
                           errors=[{"field": "token:role", "message": "role system refused"}])
    member = staff.get(who.user_id)
    if member is None:
        raise ProblemError(403, "Not in the staff directory",
                           f"{who.user_id} is not in the staff directory",
                           errors=[{"field": "token:sub", "message": "unknown staff member"}])
    for claim, given, recorded in (("role", who.role, member.role),
                                   ("unit", who.unit, member.unit)):
        if given != recorded:
            raise ProblemError(
                403, "Does not match the staff directory",
                f"the token's {claim} is {given}; the directory's is {recorded}",
                errors=[{"field": f"token:{claim}", "message": f"not {who.user_id}'s {claim}"}])
    return member
