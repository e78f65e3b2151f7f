"""The run-time settings have one source: the start-up settings, ``PUT /config`` and the
control client all take their keys and bounds from ``RuntimeConfig``."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from clients.control import CONFIG_KEYS
from service.api.schemas import ConfigUpdate
from service.runtime_config import RuntimeConfig
from service.settings import InferenceSettings, ServiceSettings, StreamSettings

SECTIONS: tuple[type[BaseModel], ...] = (InferenceSettings, StreamSettings)


def _bounds(model: type[BaseModel], key: str) -> dict:
    """The JSON schema of ``key`` without its default (``None`` in the update)."""
    prop = dict(model.model_json_schema()["properties"][key])
    prop.pop("default", None)
    if "anyOf" in prop:  # optional in ConfigUpdate: the non-null branch carries the bounds
        (inner,) = [s for s in prop.pop("anyOf") if s != {"type": "null"}]
        prop.update(inner)
    return prop


@pytest.mark.parametrize("key", list(RuntimeConfig.model_fields))
def test_each_runtime_key_has_one_start_up_field_with_the_same_bounds(key: str) -> None:
    holders = [section for section in SECTIONS if key in section.model_fields]
    assert len(holders) == 1, f"{key} is set at start-up in {holders}"
    assert _bounds(holders[0], key) == _bounds(RuntimeConfig, key)
    assert _bounds(ConfigUpdate, key) == _bounds(RuntimeConfig, key)
    assert ConfigUpdate.model_fields[key].default is None


def test_update_and_client_keys_are_the_runtime_keys() -> None:
    assert list(ConfigUpdate.model_fields) == list(RuntimeConfig.model_fields)
    assert CONFIG_KEYS == tuple(RuntimeConfig.model_fields)
    assert ConfigUpdate().model_dump(exclude_none=True) == {}
    with pytest.raises(ValidationError, match="colour"):
        ConfigUpdate(colour="red")


def test_runtime_config_takes_each_key_from_the_settings() -> None:
    inference = {
        "threshold": 0.3,
        "refine": True,
        "max_batch": 3,
        "max_delay_ms": 7,
        "queue_size": 9,
    }
    settings = ServiceSettings(
        inference={**inference, "drop_policy": "reject"}, stream={"assembly_timeout_ms": 123}
    )
    assert settings.runtime_config().model_dump(mode="json") == {
        "threshold": 0.3,
        "refine": True,
        "max_batch": 3,
        "max_delay_ms": 7.0,
        "queue_size": 9,
        "drop_policy": "reject",
        "assembly_timeout_ms": 123.0,
    }
