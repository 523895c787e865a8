"""Liveness and version: what a load balancer and a curious user ask first."""

from fastapi import APIRouter

from ae_model import __version__
from api.routes import OneHopRoute
from api.schemas.common import HealthPublic

router = APIRouter(route_class=OneHopRoute, tags=["health"])


@router.get("/v1/health", response_model=HealthPublic, summary="Service liveness")
def health() -> HealthPublic:
    return HealthPublic(status="ok", version=__version__)
