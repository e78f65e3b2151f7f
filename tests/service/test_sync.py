"""Camera synchronisation: no single camera's numbering can wedge the frame-set assembly.

Drives the real :class:`CameraSync` and :class:`FrameAssembler` together as the
pipeline's ingest thread does, on a simulated clock, for the faults a lab meets on its
first day (issue 14): a camera restarting at 0, every camera restarting, one bogus index,
cameras starting seconds apart.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.assembler import FrameAssembler
from service.stats import ServiceStats
from service.sync import CameraSync, Placed, SyncState

CAMS = ["cam0", "cam1", "cam2", "cam3"]
PERIOD_S = 0.01  # 100 frame sets/s
TIMEOUT_S = 0.1


class Rig:
    """Four cameras -> sync -> assembler, with a clock the test advances."""

    def __init__(self, timestamps: bool = True) -> None:
        self.t = 0.0
        self.stats = ServiceStats(CAMS)
        self.asm = FrameAssembler(
            planes=4,
            height=2,
            width=2,
            timeout_s=TIMEOUT_S,
            window=256,
            stats=self.stats,
            clock=lambda: self.t,
        )
        self.sync: CameraSync[int] = CameraSync(
            CAMS,
            window=256,
            active_s=2 * TIMEOUT_S,
            clock=self.asm.now,
            released_upto=lambda: self.asm.released_upto,
        )
        self.timestamps = timestamps
        self.released: list[tuple[int, int]] = []  # (set index, exposure tick of plane 0)
        self.rejects: dict[str, int] = {}

    def send(self, plane: int, frame: int, tick: int) -> None:
        """Camera ``plane`` sends raw index ``frame`` exposed at clock tick ``tick``."""
        t_ns = int(tick * PERIOD_S * 1e9) + 1 if self.timestamps else 0
        self.assemble(plane, t_ns, self.sync.place(CAMS[plane], frame, t_ns, tick))

    def assemble(self, plane: int, t_ns: int, placed: Placed[int]) -> None:
        self.rejects["desync"] = self.rejects.get("desync", 0) + placed.desync
        for s, exposure_tick in placed.sets:
            reason = self.asm.check(plane, s)
            if reason is not None:
                self.rejects[reason.value] = self.rejects.get(reason.value, 0) + 1
                continue
            self.asm.slot(plane, s, t_ns)[:] = exposure_tick
            self.asm.commit(plane, s, t_ns)

    def tick(self, tick: int, frames: dict[int, int | None]) -> None:
        """One exposure: ``frames[plane]`` is the raw index each camera sends (None: silent)."""
        self.t = tick * PERIOD_S
        for plane, frame in frames.items():
            if frame is not None:
                self.send(plane, frame, tick)
        for name, placed in self.sync.expire().items():
            self.assemble(CAMS.index(name), 0, placed)
        for fs in self.asm.pop_ready():
            ticks = fs.planes[:, 0, 0]
            assert np.all(ticks == ticks[0]), f"set {fs.frame} mixes exposures {ticks}"
            self.released.append((fs.frame, int(ticks[0])))

    def delivered_ticks(self, since: int) -> list[int]:
        return [t for _, t in self.released if t >= since]


def run(rig: Rig, ticks: range, raw: dict[int, callable]) -> None:
    for k in ticks:
        rig.tick(k, {p: f(k) for p, f in raw.items()})


def together(offset: int = 0):
    return lambda k: k - offset


@pytest.mark.parametrize("timestamps", [True, False])
def test_one_camera_restarting_at_zero_is_resynchronised(timestamps: bool) -> None:
    rig = Rig(timestamps)
    run(rig, range(0, 300), {p: together() for p in range(4)})
    # cam2 restarts its numbering at 0 at tick 300
    run(rig, range(300, 600), {0: together(), 1: together(), 2: together(300), 3: together()})
    late = rig.delivered_ticks(310)
    assert late[:3] == [310, 311, 312] and len(late) >= 285  # all but those in flight
    assert rig.sync.states()["cam2"]["state"] == SyncState.SYNCED.value
    assert rig.sync.states()["cam2"]["offset"] == -300  # raw index - set index


def test_a_restarted_camera_whose_frames_arrive_first_is_matched_by_time() -> None:
    """On a loaded host the restarted camera's frame can arrive before the other cameras'
    frames of the same exposure: its timestamp, one interval after their newest frame,
    still decides the set (arrival order alone would be one set off)."""
    rig = Rig(timestamps=True)
    run(rig, range(0, 300), {p: together() for p in range(4)})
    # cam2 restarts at 0 at tick 300 and its frame is received first in every tick
    run(rig, range(300, 400), {2: together(300), 0: together(), 1: together(), 3: together()})
    assert rig.sync.states()["cam2"]["offset"] == -300
    late = rig.delivered_ticks(305)
    assert late[:3] == [305, 306, 307] and len(late) >= 90


def test_every_camera_restarting_continues_without_duplicates() -> None:
    rig = Rig()
    run(rig, range(0, 200), {p: together() for p in range(4)})
    run(rig, range(200, 260), {p: (lambda k: None) for p in range(4)})  # pause
    run(rig, range(260, 500), {p: together(260) for p in range(4)})
    assert rig.rejects.get("duplicate", 0) == 0
    new = rig.delivered_ticks(260)
    assert len(new) >= 235  # every set of the new run but those in flight at the end
    indices = [s for s, _ in rig.released]
    assert indices == sorted(set(indices))  # strictly increasing, nothing released twice


def test_one_bogus_index_is_rejected_and_the_stream_goes_on() -> None:
    rig = Rig()
    run(rig, range(0, 100), {p: together() for p in range(4)})
    rig.tick(100, {0: 100, 1: 100, 2: 10**12, 3: 100})
    run(rig, range(101, 300), {p: together() for p in range(4)})
    assert rig.rejects["desync"] == 1
    assert rig.delivered_ticks(101)[:5] == [101, 102, 103, 104, 105]
    assert len(rig.delivered_ticks(101)) >= 185
    assert all(st["offset"] == 0 for st in rig.sync.states().values())


@pytest.mark.parametrize("timestamps", [True, False])
def test_cameras_starting_two_seconds_apart_are_matched(timestamps: bool) -> None:
    rig = Rig(timestamps)
    # plane 0 from tick 0; planes 1-3 start 2 s (200 ticks) later, each counting from 0
    raw = {0: together(), 1: together(200), 2: together(200), 3: together(200)}
    run(rig, range(0, 200), {0: raw[0]})
    run(rig, range(200, 500), raw)
    got = rig.delivered_ticks(200)
    assert len(got) >= 270, f"only {len(got)} sets after the late start"
    offsets = {n: st["offset"] for n, st in rig.sync.states().items()}
    assert offsets["cam1"] == offsets["cam2"] == offsets["cam3"]
    assert offsets["cam0"] - offsets["cam1"] in ((200, 201, 199) if not timestamps else (200,))


def test_a_camera_that_never_agrees_is_reported_desynchronised() -> None:
    rng = np.random.default_rng(0)
    rig = Rig()
    run(rig, range(0, 50), {p: together() for p in range(4)})
    run(
        rig,
        range(50, 150),
        {0: together(), 1: together(), 2: together(), 3: lambda k: int(rng.integers(10**6, 10**9))},
    )
    assert rig.sync.desynchronised() == ["cam3"]
    run(rig, range(150, 200), {p: together() for p in range(4)})
    assert rig.sync.desynchronised() == []
    assert rig.delivered_ticks(151)[:3] == [151, 152, 153]


def test_leads_of_all_cameras_at_once_agree_with_lead_of_each():
    """The ingest asks for the lead of every camera that sent, in one pass; it must give
    what :meth:`CameraSync.lead` gives per camera, also with a camera gone quiet."""
    rig = Rig()
    for tick in range(10):
        for plane in range(4):
            if plane == 3 and tick > 4:
                continue  # cam3 stops after set 4: the slowest, until it counts as gone
            if plane == 1 and tick % 2:
                continue  # cam1 behind by a set now and then
            rig.send(plane, tick, tick)
        rig.t += PERIOD_S
    lead = {c: rig.sync.lead(c) for c in CAMS}
    assert rig.sync.leads(CAMS) == lead
    assert lead["cam0"] == 5 and lead["cam3"] == 0
    rig.t += 1.0  # cam3 silent for longer than active_s: not the reference any more
    lead = {c: rig.sync.lead(c) for c in CAMS}
    assert rig.sync.leads(CAMS) == lead
