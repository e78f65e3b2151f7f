"""Client subcommands of ``voxloc``: camera, record, ctl, render, demo."""

from __future__ import annotations

import argparse

from clients.commands import camera, ctl, demo, record, render


def register(sub: argparse._SubParsersAction) -> None:
    for module in (camera, record, ctl, render, demo):
        module.register(sub)
