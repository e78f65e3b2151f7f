"""The settings a running service may change (``GET``/``PUT /config``), with their bounds.

The one place these bounds are written: the start-up settings (``[inference]``,
``[stream]`` in :mod:`service.settings`) declare their fields with the types below,
``PUT /config`` takes :func:`all_optional` of :class:`RuntimeConfig`, and the control
client reads its key list from ``RuntimeConfig.model_fields``. Light on purpose (pydantic
only), so that clients can import it.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, create_model


class DropPolicy(str, enum.Enum):
    """What the batcher queue does when it is full."""

    DROP_OLDEST = "drop_oldest"  # discard the oldest queued frame set (bounded latency)
    REJECT = "reject"  # discard the arriving frame set
    BLOCK = "block"  # wait: backpressure to the cameras through ZeroMQ


Threshold = Annotated[
    float, Field(ge=0, lt=1, description="confidence threshold; applies from the next batch")
]
Refine = Annotated[
    bool,
    Field(
        description="refine each position by the photometry fit with each frame's plane "
        "shifts (voxloc localize --refine; about 2x the network's accuracy, more engine "
        "time per localization); applies from the next batch"
    ),
]
MaxBatch = Annotated[int, Field(ge=1, le=1024, description="frame sets per engine batch")]
MaxDelayMs = Annotated[
    float, Field(ge=0, le=10_000, description="longest wait for a batch to fill, ms")
]
QueueSize = Annotated[int, Field(ge=1, le=100_000, description="batcher queue, frame sets")]
AssemblyTimeoutMs = Annotated[
    float,
    Field(gt=0, le=600_000, description="a frame set not complete this long is dropped, ms"),
]


class RuntimeConfig(BaseModel):
    """What ``PUT /config`` may change while the service runs (defaults: the settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: Threshold
    refine: Refine
    max_batch: MaxBatch
    max_delay_ms: MaxDelayMs
    queue_size: QueueSize
    drop_policy: DropPolicy
    assembly_timeout_ms: AssemblyTimeoutMs


def all_optional(
    model: type[BaseModel], name: str, doc: str, *, strict: bool = False
) -> type[BaseModel]:
    """A model with ``model``'s fields and bounds, each optional (default ``None``).

    With ``strict``, numbers must be JSON numbers (``false`` or ``"5"`` is refused, not
    read as 0 or 5) and integers whole; NaN and infinities are refused either way.
    """
    fields: dict[str, Any] = {}
    for key, field in model.model_fields.items():
        bounded: Any = field.annotation  # a type made at run time
        metadata = list(field.metadata)
        if strict and bounded in (int, float, bool):
            metadata.append(Strict())
        if metadata:
            # one tuple: mypy takes Annotated[(t, *m)] for the 3.11 form Annotated[t, *m]
            type_and_bounds = (bounded, *metadata)
            bounded = Annotated[type_and_bounds]
        fields[key] = (bounded | None, Field(None, description=field.description))
    config = ConfigDict(extra="forbid", allow_inf_nan=False)
    return create_model(name, __config__=config, __doc__=doc, **fields)
