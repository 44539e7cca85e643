"""The demo command ends its process itself once done: the exit code and every printed line survive."""

import subprocess
import sys


def test_end_process_keeps_the_code_and_the_buffered_output():
    script = (
        "import sys\n"
        "from vllm_modelslim.cli import end_process\n"
        "print('table printed', end='')\n"  # no newline: still in the buffer of a pipe
        "sys.stderr.write('log line')\n"
        "end_process(3)\n"
        "print('never')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 3
    assert run.stdout == "table printed" and run.stderr == "log line"
