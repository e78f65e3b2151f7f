"""A fixed sample that blinks and drifts: the time model of ``voxloc simulate --blinking``.

Three parts, each drawn from its own seeded numpy generator so that a stack is
reproducible:

* :func:`draw_emitters`: the sample, emitter positions drawn **once per stack**, either
  uniformly or on small rings (``structure="rings"``). Rings give drift correction by
  cross-correlation (RCC) something to lock onto: a ring of several emitters is lit in
  almost every time segment even when each of its emitters is off most of the time, so
  every pair of segment images shares most of its bright spots.
* :class:`Blinking`: two-state Markov kinetics per frame. An emitter that is on stays on
  for a geometric number of frames with mean ``on_frames``; off periods have mean
  ``off_frames``; the chain starts in its stationary state, so the duty cycle is
  ``on / (on + off)`` from the first frame.
* :class:`StageDrift`: the stage's drift of the whole sample over the stack, a polynomial
  in the stack's normalised time ``s = t / (frames - 1)``: ``sum_k c_k s^(k+1)``, with
  ``c_1`` the linear drift from the first to the last frame (nm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Structure = Literal["uniform", "rings"]


@dataclass(frozen=True)
class Emitters:
    """The sample: ``(E, 3)`` float64 positions (x, y, z) at frame 0, nm, and ``(E,)``
    float64 brightness weights (the simulator's weight per on-frame)."""

    xyz_nm: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return int(self.weights.shape[0])


def draw_emitters(
    count: int,
    *,
    lo_nm: tuple[float, float],
    hi_nm: tuple[float, float],
    z_nm: tuple[float, float],
    weight_range: tuple[float, float],
    structure: Structure = "uniform",
    ring_emitters: int = 8,
    ring_radius_nm: float = 50.0,
    seed: int = 0,
) -> Emitters:
    """``count`` emitters in the box ``lo_nm..hi_nm`` (x, y) times ``z_nm`` (z, a range).

    ``structure="rings"``: ``ceil(count / ring_emitters)`` ring centres drawn uniformly,
    each with ``ring_emitters`` emitters evenly spaced on a circle of ``ring_radius_nm``
    in the lateral plane at the centre's z (at a random rotation), like the nuclear pore
    complexes and DNA origami rings used to test SMLM.
    """
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(lo_nm, float), np.asarray(hi_nm, float)
    if structure == "uniform":
        xy = rng.uniform(lo, hi, size=(count, 2))
        z = rng.uniform(*z_nm, size=count)
    elif structure == "rings":
        rings = -(-count // ring_emitters) if count else 0
        centres = rng.uniform(lo, hi, size=(rings, 2))
        phase = rng.uniform(0.0, 2 * np.pi, size=(rings, 1))
        angle = phase + 2 * np.pi * np.arange(ring_emitters) / ring_emitters
        offsets = ring_radius_nm * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
        xy = (centres[:, None, :] + offsets).reshape(-1, 2)
        z = np.repeat(rng.uniform(*z_nm, size=rings), ring_emitters)
    else:
        raise ValueError(f"unknown structure {structure!r}; expected 'uniform' or 'rings'")
    weights = rng.uniform(*weight_range, size=len(z))
    return Emitters(np.column_stack([xy, z]), weights)


@dataclass
class Blinking:
    """Two-state (on/off) Markov kinetics of ``emitters`` emitters, stepped frame by frame.

    Args:
        on_frames: mean on time, frames (>= 1).
        off_frames: mean off time, frames (>= 1).
    """

    emitters: int
    on_frames: float
    off_frames: float
    seed: int = 0

    def __post_init__(self) -> None:
        if self.on_frames < 1:
            raise ValueError(f"on_frames must be >= 1 (a whole frame), got {self.on_frames}")
        if self.off_frames < 1:
            raise ValueError(f"off_frames must be >= 1 (a whole frame), got {self.off_frames}")
        self._rng = np.random.default_rng(self.seed)
        self._on = self._rng.random(self.emitters) < self.duty_cycle

    @property
    def duty_cycle(self) -> float:
        """Fraction of frames an emitter is on."""
        return self.on_frames / (self.on_frames + self.off_frames)

    def step(self, frames: int) -> np.ndarray:
        """``(frames, emitters)`` bool: which emitters are on in the next ``frames`` frames."""
        p_off = 1.0 / self.on_frames  # per-frame switching probabilities
        p_on = 1.0 / self.off_frames
        out = np.empty((frames, self.emitters), bool)
        for t in range(frames):
            out[t] = self._on
            u = self._rng.random(self.emitters)
            self._on = np.where(self._on, u >= p_off, u < p_on)
        return out


@dataclass(frozen=True)
class StageDrift:
    """Drift of the sample over a stack of ``frames`` frames.

    ``coeffs_nm``: ``(K, 3)`` float64, row ``k`` the (x, y, z) drift of the term
    ``s^(k+1)`` at the last frame, nm; row 0 is the linear drift.
    """

    coeffs_nm: np.ndarray
    frames: int

    @classmethod
    def linear(cls, total_nm: tuple[float, ...], frames: int) -> StageDrift:
        """A linear drift of ``total_nm`` (x, y[, z]) from the first to the last frame."""
        return cls.polynomial([total_nm], frames)

    @classmethod
    def polynomial(cls, terms_nm: list[tuple[float, ...]], frames: int) -> StageDrift:
        """Terms by power (linear first), each (x, y) or (x, y, z) nm at the last frame."""
        rows = []
        for term in terms_nm:
            if len(term) not in (2, 3):
                raise ValueError(f"a drift term is DX DY [DZ] in nm, got {len(term)} values")
            rows.append([*term, 0.0][:3])
        coeffs = np.asarray(rows, float).reshape(-1, 3)
        return cls(coeffs, frames)

    def at(self, frame: np.ndarray) -> np.ndarray:
        """``(n, 3)`` float64 drift at the given frames (counting from 0), nm."""
        s = np.asarray(frame, float) / max(self.frames - 1, 1)
        powers = s[:, None] ** np.arange(1, len(self.coeffs_nm) + 1)[None, :]
        return powers @ self.coeffs_nm

    @property
    def total_nm(self) -> np.ndarray:
        """``(3,)`` drift at the last frame vs the first, nm."""
        return self.coeffs_nm.sum(axis=0)
