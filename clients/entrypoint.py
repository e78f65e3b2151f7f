"""The ``voxloc`` console script: :func:`clients.cli.main`, with one clear message on a
light install (``pip install voxloc``, an acquisition PC) where the engine is missing."""

from __future__ import annotations

import sys

# top-level modules of the `engine` extra (pyproject.toml); their absence means a light install
ENGINE_MODULES = frozenset(
    {
        "torch",
        "scipy",
        "fastapi",
        "uvicorn",
        "pydantic",
        "pydantic_settings",
        "tifffile",
        "h5py",
        "yaml",
        "onnx",
        "onnxruntime",
        "prometheus_client",
        "tqdm",
        "matplotlib",
        "httpx",
        "PIL",
    }
)


def main(argv: list[str] | None = None) -> int:
    try:
        from clients.cli import main as cli_main

        return cli_main(argv)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ENGINE_MODULES:
            raise
        print(
            f"voxloc: the voxloc command needs the engine ({exc.name} is not installed): "
            "pip install 'voxloc[engine]'. This install has the Python API for acquisition "
            "PCs (clients.camera, clients.micromanager, clients.subscriber).",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
