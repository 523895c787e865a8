"""Liveness and version: what a load balancer and a curious user ask first."""

from fastapi import APIRouter
from pydantic import BaseModel

from ae_model import __version__

router = APIRouter(tags=["health"])


class HealthPublic(BaseModel):
    status: str
    version: str


@router.get("/v1/health", response_model=HealthPublic, summary="Service liveness")
def health() -> HealthPublic:
    return HealthPublic(status="ok", version=__version__)
