"""Command defaults come from the config objects that own them, and the parser stays light."""

from __future__ import annotations

import subprocess
import sys

from clients.cli import build_parser
from clients.commands.options import Default, given
from engines.evaluate.runner import EvalConfig
from engines.train import TrainConfig


def _sub(name: str):
    return build_parser()._subparsers._group_actions[0].choices[name]


def test_train_defaults_are_train_configs() -> None:
    args = build_parser().parse_args(["train", "-o", "m"])
    assert isinstance(args.molecules, Default) and args.molecules.value == (5, 90)
    assert TrainConfig(out_dir="m").molecules == (5, 90)  # what the shipped model used
    assert "(default 5 90)" in " ".join(_sub("train").format_help().split())
    assert given(args, steps="steps", molecules="molecules") == {}
    given_args = build_parser().parse_args(["train", "-o", "m", "--molecules", "1", "2"])
    assert given(given_args, molecules="molecules") == {"molecules": (1, 2)}


def test_evaluate_without_options_runs_eval_config_defaults() -> None:
    from clients.commands.options import build

    args = build_parser().parse_args(["evaluate"])
    fields = dict(frames="frames", thresholds="thresholds", densities="densities")
    assert build(EvalConfig, args, fields) == EvalConfig()


def test_building_the_parser_imports_no_torch() -> None:
    code = "import sys; from clients.cli import build_parser; build_parser(); "
    code += "assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
