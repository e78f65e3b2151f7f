"""Control-plane routes (docs/protocol.md Sec. 5). HTTP errors exist only here."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from engines.errors import EngineError, ModelNotFoundError
from engines.modeldir import available_models, read_info
from service.api.auth import MUTATING_ERRORS, mutating
from service.api.errors import describe_errors
from service.api.schemas import (
    AvailableModel,
    CameraRegistrationState,
    ConfigUpdate,
    ErrorAnswer,
    Live,
    Models,
    ModelSummary,
    ModelSwitch,
    Ready,
    Registration,
    RegistrationUpdate,
    Stats,
    StreamHealth,
    UnreadableModel,
)
from service.inference import ModelBusyError
from service.pipeline import Pipeline
from service.runtime_config import RuntimeConfig
from service.settings import CameraRegistration

router = APIRouter()
UNAUTHORIZED = MUTATING_ERRORS  # the errors of every route that declares ``mutating``
INVALID: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "the body could not be read (not UTF-8 JSON)"},
    422: {"model": ErrorAnswer, "description": "a refused value; the detail names each field"},
}
MODEL_NAME_MAX = 255  # a model name is a directory name


class PrometheusResponse(Response):
    media_type = CONTENT_TYPE_LATEST


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


def _invalid(exc: ValidationError, *prefix: str) -> HTTPException:
    errors = [{**e, "loc": (*prefix, *e["loc"])} for e in exc.errors()]
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, describe_errors(errors))


@router.get("/health/live", tags=["health"])
def live(request: Request) -> Live:
    return Live(status="live", state=_pipeline(request).state, instance=request.app.state.instance)


@router.get(
    "/health/ready",
    tags=["health"],
    responses={503: {"model": ErrorAnswer, "description": "no model or pipeline not running"}},
)
def ready(request: Request) -> Ready:
    p = _pipeline(request)
    if not p.ready:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"not ready: pipeline {p.state.value}, model "
            f"{p.active_model.name if p.active_model else None!r}",
        )
    active = p.active_model
    assert active is not None
    return Ready(
        ready=True, state=p.state, model=active.name, version=active.version, backend=active.backend
    )


@router.get(
    "/health/stream",
    tags=["health"],
    response_model=StreamHealth,
    responses={
        503: {"model": StreamHealth, "description": "stalled: frames arrive, none published"}
    },
)
def stream_health(request: Request) -> Any:
    health = StreamHealth(**_pipeline(request).stream_health())
    if not health.healthy:
        return JSONResponse(health.model_dump(), status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    return health


@router.get("/models", tags=["models"])
def models(request: Request) -> Models:
    p = _pipeline(request)
    available: list[AvailableModel | UnreadableModel] = []
    for name, path in available_models().items():
        try:
            info = read_info(path)
            available.append(
                AvailableModel(name=name, version=info.version, dir=str(path), planes=info.planes)
            )
        except EngineError as exc:
            available.append(UnreadableModel(name=name, dir=str(path), error=str(exc)))
    active = p.active_model
    return Models(
        active=ModelSummary(**active.describe()) if active else None,
        loading=p.model_loading,
        available=available,
    )


@router.post(
    "/models/{name}/load",
    tags=["models"],
    dependencies=mutating,
    responses={
        **UNAUTHORIZED,
        404: {"model": ErrorAnswer, "description": "unknown model"},
        409: {"model": ErrorAnswer, "description": "another load in progress"},
        422: {"model": ErrorAnswer, "description": "a bad name, or the model cannot be loaded"},
    },
)
def load_model(
    name: Annotated[
        str,
        Path(
            min_length=1,
            max_length=MODEL_NAME_MAX,
            pattern=r"^[^/\\\x00]+$",
            description="a model name (GET /models)",
        ),
    ],
    request: Request,
) -> ModelSwitch:
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
    return ModelSwitch(
        active=ModelSummary(**new.describe()),
        previous=ModelSummary(**previous.describe()) if previous else None,
    )


@router.get("/config", tags=["config"])
def get_config(request: Request) -> RuntimeConfig:
    return _pipeline(request).config


@router.put(
    "/config", tags=["config"], dependencies=mutating, responses={**UNAUTHORIZED, **INVALID}
)
def put_config(update: ConfigUpdate, request: Request) -> RuntimeConfig:
    changes = update.model_dump(exclude_none=True)
    try:
        return _pipeline(request).update_config(changes)
    except ValidationError as exc:
        raise _invalid(exc, "body") from exc


def _registration(p: Pipeline) -> Registration:
    planes = {c.name: c.plane for c in p.settings.cameras}
    return Registration(
        cameras={
            name: CameraRegistrationState(plane=planes[name], **reg.model_dump(mode="json"))
            for name, reg in p.registration.items()
        }
    )


@router.get("/registration", tags=["registration"])
def get_registration(request: Request) -> Registration:
    return _registration(_pipeline(request))


@router.put(
    "/registration",
    tags=["registration"],
    dependencies=mutating,
    responses={**UNAUTHORIZED, **INVALID},
)
def put_registration(update: RegistrationUpdate, request: Request) -> Registration:
    p = _pipeline(request)
    changes = {name: cam.model_dump(exclude_none=True) for name, cam in update.cameras.items()}
    current = p.registration
    frame = {"frame": (p.settings.stream.height, p.settings.stream.width)}
    for name, fields in changes.items():  # first, to name the camera of a refused value
        if name in current:
            try:
                CameraRegistration.model_validate(
                    {**current[name].model_dump(), **fields}, context=frame
                )
            except ValidationError as exc:
                raise _invalid(exc, "body", "cameras", name) from exc
    try:
        p.update_registration(changes)
    except KeyError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc.args[0])) from exc
    except ValidationError as exc:
        raise _invalid(exc, "body", "cameras") from exc
    return _registration(p)


@router.get("/stats", tags=["stats"], response_model=Stats, response_model_exclude_unset=True)
def stats(request: Request) -> dict[str, Any]:
    # exclude_unset: keys the pipeline leaves out before it has started stay out
    return _pipeline(request).snapshot()


@router.get("/metrics", tags=["stats"], response_class=PrometheusResponse)
def metrics(request: Request) -> PrometheusResponse:
    """Prometheus text format (``voxloc_*`` metrics)."""
    return PrometheusResponse(_pipeline(request).metrics())
