"""A camera's connection state follows its socket (the ingest's monitor), whether the
camera was streaming or idle when it went away, and a camera that comes back is seen."""

from __future__ import annotations

import numpy as np

from tests.service.conftest import Service, wait_for


def states(svc: Service) -> dict[str, str]:
    return {name: cam["state"] for name, cam in svc.stats()["cameras"].items()}


def test_connection_states_follow_the_cameras_sockets(service: Service) -> None:
    wait_for(lambda: set(states(service).values()) == {"connected"}, "every camera connected")
    image = np.full((64, 64), 10.0, np.float32)
    for frame in range(3):
        service.send("cam0", 0, frame, image)
    wait_for(lambda: states(service)["cam0"] == "streaming", "cam0 streaming")

    service.cams["cam0"].close(linger=0)  # it was streaming
    service.cams["cam1"].close(linger=0)  # it never sent
    wait_for(
        lambda: [states(service)[c] for c in ("cam0", "cam1")] == ["disconnected"] * 2,
        "cam0 and cam1 disconnected",
    )
    assert [states(service)[c] for c in ("cam2", "cam3")] == ["connected"] * 2

    service.cams["cam1"] = service.camera("cam1")  # back again
    wait_for(lambda: states(service)["cam1"] == "connected", "cam1 connected again")
    assert service.stats()["state"] == "running"
