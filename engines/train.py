"""Training on frames simulated on the fly (paper Sec. 4.2), with checkpoints and resume."""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engines.config import SimSettings
from engines.errors import EngineError
from engines.geometry import REFERENCE_AREA_PX
from engines.io.atomic import atomic_output
from engines.loss import voxel_loss
from engines.modeldir import ModelInfo, load_model, save_model
from engines.network import VoxelNet
from engines.psf import peak
from engines.psf_model import bundle_spline
from engines.simulator import Simulator

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    out_dir: Path
    name: str = "model"
    version: str = "1"
    steps: int = 5000
    batch: int = 50
    crop_px: int = 32
    molecules: tuple[int, int] = (5, 90)  # per 64x64 area; the shipped model's
    lr: float = 1e-3
    lr_final: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 200
    threads: int | None = None
    device: str = "cpu"
    bf16: bool = False
    init_from: str | None = None  # a model name or directory to start from (fine-tuning)
    command: str = field(default_factory=lambda: " ".join(sys.argv))


def input_normalisation(settings: SimSettings) -> tuple[float, float]:
    """(offset, scale) mapping raw frames to roughly zero background and unit peaks."""
    n = settings.noise
    offset = n.expected_background(settings.psf.b)
    in_focus_peak = float(peak(torch.tensor(0.0), settings.psf))
    scale = n.intensity_scale() * in_focus_peak * 0.5
    return offset, max(scale, 1e-6)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    """Cosine from ``lr`` to ``lr_final``; constant when they are equal (the paper)."""
    t = min(step / max(cfg.steps, 1), 1.0)
    return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * t))


def _crop_molecules(cfg: TrainConfig) -> tuple[int, int]:
    ratio = cfg.crop_px * cfg.crop_px / REFERENCE_AREA_PX
    lo, hi = cfg.molecules
    return max(0, round(lo * ratio)), max(1, round(hi * ratio))


def train(cfg: TrainConfig, settings: SimSettings, *, resume: bool = False) -> Path:
    """Train a model and write its directory; returns the directory."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    offset, scale = input_normalisation(settings)
    info = ModelInfo(
        name=cfg.name,
        version=cfg.version,
        settings=bundle_spline(settings, out),
        input_offset=offset,
        input_scale=scale,
    )
    # torch's Module.to overloads omit its documented memory_format= argument
    net = info.build().to(cfg.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    sim = Simulator(settings, seed=cfg.seed, device=cfg.device)
    start = 0
    ema: float | None = None
    history: list[str] = []
    ckpt_path = out / CHECKPOINT
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location=cfg.device, weights_only=False)
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())  # map_location moved it
        start = ckpt["step"]
        ema = ckpt.get("loss_ema")
        log.info("resumed from %s at step %d", ckpt_path, start)
        note = _restore_sim_rng(sim, ckpt["sim_rng"], cfg.seed, start)
        history = ckpt.get("history", []) + [f"resumed at step {start}: {cfg.command}{note}"]
    else:
        history = [cfg.command]
        if cfg.init_from:
            start_from(net, info, cfg.init_from)

    mol = _crop_molecules(cfg)
    net.train()
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc="train",
        dynamic_ncols=True,
        mininterval=2.0,
    )
    t0 = time.perf_counter()
    done = 0
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        batch = sim.sample(cfg.batch, mol, height=cfg.crop_px, width=cfg.crop_px)
        frames = batch.frames.contiguous(memory_format=torch.channels_last)
        with torch.autocast(torch.device(cfg.device).type, torch.bfloat16, enabled=cfg.bf16):
            logits = net.logits(frames)
        loss, parts = voxel_loss(logits.float(), batch.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        done += cfg.batch
        fps = done / (time.perf_counter() - t0)
        bar.set_postfix(
            loss=f"{ema:.4f}", bce=f"{parts['bce']:.3f}", l1=f"{parts['l1']:.3f}", fps=f"{fps:.0f}"
        )
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _checkpoint(ckpt_path, net, opt, sim, step + 1, ema, history)
            info.training = _training_record(cfg, step + 1, ema, history)
            save_model(net, info, out)
    bar.close()
    info.training = _training_record(cfg, cfg.steps, ema, history)
    save_model(net, info, out)
    return out


def _restore_sim_rng(sim: Simulator, state: torch.Tensor, seed: int, step: int) -> str:
    """Put the simulator's generator back where the checkpoint left it.

    A CPU generator's state does not fit a CUDA one (nor the reverse): a run moved to
    another kind of device goes on with its generator seeded from (seed, step) instead, and
    the returned note says so in the model's history. Returns "" when the state fitted.
    """
    if state.numel() == sim.gen.get_state().numel():
        sim.gen.set_state(state.cpu())  # generator states are CPU byte tensors
        return ""
    sim.gen.manual_seed(seed * 1_000_003 + step)
    log.warning(
        "the checkpoint's frame generator is another device's: frames go on from a "
        "generator seeded from seed %d and step %d",
        seed,
        step,
    )
    return f" (moved to {sim.device.type}: frame generator reseeded from seed and step)"


NORMALISATION = ("input_offset", "input_scale")  # buffers --init does not copy


def start_from(net: VoxelNet, info: ModelInfo, source: str) -> None:
    """Copy another model's weights into ``net`` (fine-tuning for a new microscope).

    The layers must match (planes, channels, kernels); the input normalisation stays the one
    computed for this model's camera, since it maps either camera's frames to the same
    range. Raises :class:`EngineError` naming what differs.
    """
    src_net, src = load_model(source)
    for what in ("planes", "channels", "kernels"):
        if getattr(src, what) != getattr(info, what):
            raise EngineError(
                f"--init {source}: its {what} {getattr(src, what)} differ from "
                f"this model's {getattr(info, what)}"
            )
    state = {k: v for k, v in src_net.state_dict().items() if k not in NORMALISATION}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if set(missing) != set(NORMALISATION) or unexpected:
        raise EngineError(
            f"--init {source}: weights do not fit (missing {missing}, unexpected {unexpected})"
        )
    log.info("starting from the weights of model %s v%s", src.name, src.version)


def _checkpoint(
    path: Path,
    net: VoxelNet,
    opt: torch.optim.Optimizer,
    sim: Simulator,
    step: int,
    ema: float | None,
    history: list[str],
) -> None:
    state = {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "sim_rng": sim.gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "step": step,
        "loss_ema": ema,
        "history": history,
    }
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def _training_record(cfg: TrainConfig, step: int, ema: float | None, history: list[str]) -> dict:
    return {
        "command": cfg.command,
        "history": history,
        "seed": cfg.seed,
        "steps_done": step,
        "steps": cfg.steps,
        "batch": cfg.batch,
        "crop_px": cfg.crop_px,
        "molecules_per_64x64": list(cfg.molecules),
        "lr": cfg.lr,
        "lr_final": cfg.lr_final,
        "bf16": cfg.bf16,
        "frames_seen": step * cfg.batch,
        "final_loss_ema": ema,
        "torch": torch.__version__,
        "init_from": cfg.init_from,
    }
