"""Print pip requirements pinning every declared dependency range of pyproject.toml to its
floor (``name>=X`` -> ``name==X``, markers kept), for .ci/run's floors job: the core
dependencies and the extras in `EXTRAS`, or (``floors.py EXTRA ...``) those extras alone.
The video extra is tried apart: trackeval 1.3 needs numpy >= 2.3, above the core's floor.

Left out, each for a reason written next to it in pyproject.toml: torch (CI pins its CPU
build; the floor's wheel on PyPI is a CUDA build), and the GPU-only triton and tensorrt.
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

NOT_PINNED = {"torch", "triton", "tensorrt", "tal-reid"}
EXTRAS = ("train", "scale", "test")


def floors(pyproject: Path, extras: tuple[str, ...] = ()) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = [] if extras else list(project["dependencies"])
    for extra in extras or EXTRAS:
        requirements += project["optional-dependencies"][extra]
    pins = []
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        name = re.match(r"[A-Za-z0-9_.-]+", spec.strip())[0]
        if name.lower() in NOT_PINNED:
            continue
        floor = re.search(r"(?:>=|==)\s*([0-9][^,\s]*)", spec)  # an exact pin is its own floor
        if floor is None:
            sys.exit(f"{pyproject}: {requirement!r} has no floor (>=) to test")
        extras = re.match(r"[A-Za-z0-9_.-]+(\[[^]]*\])?", spec.strip())[1] or ""
        pins.append(f"{name}{extras}=={floor[1]}" + (f"; {marker.strip()}" if marker else ""))
    return pins


if __name__ == "__main__":
    print("\n".join(floors(Path(__file__).resolve().parents[1] / "pyproject.toml",
                           tuple(sys.argv[1:]))))
