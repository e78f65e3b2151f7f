"""Acquisition routes (docs/protocol.md Sec. 5.6): start, stop, list."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from service.acquisitions import AcquisitionError
from service.api.auth import MUTATING_ERRORS, mutating
from service.api.schemas import Answer, ErrorAnswer
from service.pipeline import Pipeline

router = APIRouter(tags=["acquisitions"])
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorAnswer, "description": "a refused value; the detail names each field"}
}


class AcquisitionStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="free-form label")
    metadata: dict[str, Any] = Field(default_factory=dict, description="stored as given")
    record: str | None = Field(
        None,
        max_length=1024,
        description="server-side recording: a .csv or .h5 path relative to the service's "
        "recording.directory; a metadata JSON is written beside it",
    )


class AcquisitionInfo(Answer):
    id: str
    name: str
    state: str
    metadata: dict[str, Any]
    started_ns: int
    stopped_ns: int | None
    frame_sets: int
    localizations: int
    last_frame: int
    recording: str | None
    models: list[dict[str, Any]]
    counts: dict[str, dict[str, int]]


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


@router.post(
    "/acquisitions",
    status_code=status.HTTP_201_CREATED,
    dependencies=mutating,
    response_model=AcquisitionInfo,
    responses={
        **MUTATING_ERRORS,
        **INVALID,
        400: {"model": ErrorAnswer, "description": "bad recording path, or an unreadable body"},
    },
)
def start_acquisition(body: AcquisitionStart, request: Request) -> dict[str, Any]:
    try:
        return _pipeline(request).start_acquisition(body.name, body.metadata, body.record)
    except AcquisitionError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc


@router.post(
    "/acquisitions/current/stop",
    dependencies=mutating,
    response_model=AcquisitionInfo,
    responses={
        **MUTATING_ERRORS,
        409: {"model": ErrorAnswer, "description": "no acquisition is running"},
    },
)
def stop_acquisition(request: Request) -> dict[str, Any]:
    try:
        return _pipeline(request).stop_acquisition()
    except AcquisitionError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


class AcquisitionList(Answer):
    current: str = Field(description="the acquisition frames without an id belong to")
    acquisitions: list[AcquisitionInfo]


@router.get("/acquisitions", response_model=AcquisitionList)
def list_acquisitions(request: Request) -> dict[str, Any]:
    return _pipeline(request).acquisition_list()


@router.get(
    "/acquisitions/{acq_id}",
    response_model=AcquisitionInfo,
    responses={
        **INVALID,
        404: {"model": ErrorAnswer, "description": "unknown acquisition"},
    },
)
def get_acquisition(acq_id: str, request: Request) -> dict[str, Any]:
    try:
        return _pipeline(request).acquisition(acq_id)
    except KeyError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc.args[0])) from exc
