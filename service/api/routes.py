"""Control-plane routes (docs/protocol.md Sec. 5). HTTP errors exist only here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from engines.errors import EngineError, ModelNotFoundError
from engines.modeldir import available_models, read_info
from service.api.auth import require_token
from service.api.schemas import ConfigUpdate, RegistrationUpdate
from service.inference import ModelBusyError
from service.pipeline import Pipeline

router = APIRouter()
mutating = [Depends(require_token)]


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


def _invalid(exc: ValidationError) -> HTTPException:
    msgs = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']} (got {e.get('input')!r})"
        for e in exc.errors()
    )
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, msgs)


@router.get("/health/live", tags=["health"])
def live(request: Request) -> dict[str, Any]:
    return {"status": "live", "state": _pipeline(request).state.value}


@router.get("/health/ready", tags=["health"])
def ready(request: Request) -> dict[str, Any]:
    p = _pipeline(request)
    if not p.ready:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"not ready: pipeline {p.state.value}, model "
            f"{p.models.active.name if p.models.active else None!r}",
        )
    assert p.models.active is not None
    return {
        "ready": True,
        "state": p.state.value,
        "model": p.models.active.name,
        "version": p.models.active.version,
        "backend": p.models.active.backend,
    }


@router.get("/models", tags=["models"])
def models(request: Request) -> dict[str, Any]:
    p = _pipeline(request)
    available = []
    for name, path in available_models().items():
        try:
            info = read_info(path)
            available.append(
                {"name": name, "version": info.version, "dir": str(path), "planes": info.planes}
            )
        except EngineError as exc:
            available.append({"name": name, "dir": str(path), "error": str(exc)})
    active = p.models.active
    return {
        "active": active.describe() if active else None,
        "loading": p.models.loading,
        "available": available,
    }


@router.post("/models/{name}/load", tags=["models"], dependencies=mutating)
def load_model(name: str, request: Request) -> dict[str, Any]:
    """Load and warm ``name`` beside the running model, then switch between batches."""
    try:
        new, previous = _pipeline(request).load_model(name)
    except ModelNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ModelBusyError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except EngineError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"model {name!r} not loaded, the previous one keeps serving: {exc}",
        ) from exc
    return {"active": new.describe(), "previous": previous.describe() if previous else None}


@router.get("/config", tags=["config"])
def get_config(request: Request) -> dict[str, Any]:
    return _pipeline(request).config.model_dump(mode="json")


@router.put("/config", tags=["config"], dependencies=mutating)
def put_config(update: ConfigUpdate, request: Request) -> dict[str, Any]:
    changes = update.model_dump(exclude_none=True)
    try:
        return _pipeline(request).update_config(changes).model_dump(mode="json")
    except ValidationError as exc:
        raise _invalid(exc) from exc


def _registration(p: Pipeline) -> dict[str, Any]:
    planes = {c.name: c.plane for c in p.settings.cameras}
    return {
        "cameras": {
            name: {"plane": planes[name], **reg.model_dump(mode="json")}
            for name, reg in p.registration.items()
        }
    }


@router.get("/registration", tags=["registration"])
def get_registration(request: Request) -> dict[str, Any]:
    return _registration(_pipeline(request))


@router.put("/registration", tags=["registration"], dependencies=mutating)
def put_registration(update: RegistrationUpdate, request: Request) -> dict[str, Any]:
    p = _pipeline(request)
    changes = {name: cam.model_dump(exclude_none=True) for name, cam in update.cameras.items()}
    try:
        p.update_registration(changes)
    except KeyError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc.args[0])) from exc
    except ValidationError as exc:
        raise _invalid(exc) from exc
    return _registration(p)


@router.get("/stats", tags=["stats"])
def stats(request: Request) -> dict[str, Any]:
    return _pipeline(request).snapshot()


@router.get("/metrics", tags=["stats"])
def metrics(request: Request) -> Response:
    data = generate_latest(_pipeline(request).stats.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
