"""Run a few statements in a fresh interpreter whose C++ compiler fails (``CXX=/bin/false``).

The project's C++ kernels build on first use; a host without a working compiler must fall back to
the next kernel and log why. The statements run after ``import logging, torch`` with INFO logging
to stderr (the kernel selection lines) and a fresh, empty build cache in ``tmp_path``.
"""

import os
import subprocess
import sys
from pathlib import Path


def run_without_a_compiler(tmp_path: Path, statements: str) -> subprocess.CompletedProcess:
    """The finished run (stdout, stderr); fails the test if the interpreter exits with an error."""
    script = "import logging, torch\nlogging.basicConfig(level=logging.INFO, format='%(message)s')\n"
    env = {**os.environ, "MODELSLIM_CACHE_DIR": str(tmp_path), "CXX": "/bin/false"}
    run = subprocess.run(
        [sys.executable, "-c", script + statements], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    return run
