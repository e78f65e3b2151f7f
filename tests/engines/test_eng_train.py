"""A tiny training run: the Eq. 11 loss falls, and ``train`` writes a loadable model dir."""

from __future__ import annotations

import json

import pytest
import torch

from engines.config import SimSettings
from engines.errors import EngineError
from engines.loss import voxel_loss
from engines.modeldir import load_model
from engines.network import VoxelNet
from engines.simulator import Simulator
from engines.train import TrainConfig, input_normalisation, train

CROP = 16


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_loss_falls_on_held_out_frames():
    torch.manual_seed(0)
    settings = SimSettings()
    offset, scale = input_normalisation(settings)
    net = VoxelNet(4, input_offset=offset, input_scale=scale)
    sim = Simulator(settings, seed=0)
    held_out = sim.sample(8, (2, 5), height=CROP, width=CROP)

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(voxel_loss(net.logits(held_out.frames), held_out.targets)[0])

    before = held_out_loss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.99))
    for _ in range(15):
        batch = sim.sample(4, (2, 5), height=CROP, width=CROP)
        loss, _ = voxel_loss(net.logits(batch.frames), batch.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.8 * before, f"loss {before:.3f} -> {after:.3f}"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_train_writes_model_dir_and_resumes(tmp_path):
    out = tmp_path / "tiny"
    cfg = TrainConfig(
        out_dir=out,
        name="tiny",
        steps=2,
        batch=2,
        crop_px=CROP,
        checkpoint_every=1,
        seed=5,
        command="voxloc train -o tiny",
    )
    train(cfg, SimSettings())
    info = json.loads((out / "model.json").read_text())
    assert info["name"] == "tiny"
    assert info["training"]["seed"] == 5 and info["training"]["steps_done"] == 2
    assert info["training"]["command"] == "voxloc train -o tiny"
    cfg.steps = 3
    train(cfg, SimSettings(), resume=True)
    info = json.loads((out / "model.json").read_text())
    assert info["training"]["steps_done"] == 3
    net, minfo = load_model(out)
    y = net(torch.zeros(1, 4, 20, 24))  # fully convolutional: any H x W
    assert y.shape == (1, 4, 4, 20, 24) and minfo.name == "tiny"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_run_checkpointed_on_another_device_resumes_with_a_reseeded_generator(tmp_path):
    out = tmp_path / "moved"
    cfg = TrainConfig(out_dir=out, steps=1, batch=2, crop_px=CROP, seed=5, command="first")
    train(cfg, SimSettings())
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    ckpt["sim_rng"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state
    torch.save(ckpt, out / "checkpoint.pt")
    cfg.steps, cfg.command = 2, "second"
    train(cfg, SimSettings(), resume=True)
    history = json.loads((out / "model.json").read_text())["training"]["history"]
    assert history[-1].startswith("resumed at step 1: second (moved to cpu: frame generator")


def test_init_starts_from_another_models_weights_with_its_own_normalisation(tmp_path):
    emccd = SimSettings(noise={"mode": "emccd", "em_gain": 150, "baseline_adu": 200})
    cfg = TrainConfig(
        out_dir=tmp_path / "ft", steps=1, batch=2, crop_px=CROP, init_from="default", command="test"
    )
    out = train(cfg, emccd)
    tuned, info = load_model(out)
    shipped, _ = load_model("default")
    assert info.training["init_from"] == "default"
    offset, _ = input_normalisation(emccd)
    assert float(tuned.input_offset) == pytest.approx(offset) != float(shipped.input_offset)
    # one small Adam step away from the shipped weights, not a fresh initialisation
    for (name, a), b in zip(tuned.state_dict().items(), shipped.state_dict().values(), strict=True):
        if a.is_floating_point() and a.dim() == 4:
            assert (a - b).abs().max() < 0.01, name


def test_init_from_a_model_with_other_planes_names_the_difference(tmp_path):
    cfg = TrainConfig(
        out_dir=tmp_path / "ft", steps=1, batch=2, crop_px=CROP, init_from="default", command="test"
    )
    with pytest.raises(EngineError, match="planes 4 differ from this model's 3"):
        train(cfg, SimSettings(geometry={"planes": 3}))
