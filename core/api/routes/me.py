"""The account a token acts as."""

from __future__ import annotations

from fastapi import APIRouter

from core.api.deps import CurrentUser
from core.api.responses import Me, problems

router = APIRouter(prefix="/api", tags=["account"], responses=problems(401, 422))


@router.get("/me", response_model=Me)
def me(user: CurrentUser) -> Me:
    """The account, with its balance as of this request."""
    return Me(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        role=user.role.value,
        balance=user.balance,
        is_active=user.is_active,
    )
