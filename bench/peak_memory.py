"""Run a headstart command as a fresh process and measure its peak resident memory.

On Linux, ``ru_maxrss`` of a program started by fork and exec begins at the size its parent
had at the fork (the high-water mark is carried across exec), so a benchmark that has imported
torch would see its own size in every child's figure. ``VmHWM`` in ``/proc/self/status``
belongs to the new program alone; the decoding workers are forks without exec, so their
``RUSAGE_CHILDREN`` figure is theirs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

CLI = "from headstart.cli import main\nmain(sys.argv[1:])\n"
_WRAPPER = """\
import resource, sys
status = 0
try:
{body}
except SystemExit as stop:
    status = stop.code
hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print('PEAK-RSS-KB', hwm.split()[1], workers, flush=True)
sys.exit(status)
"""


@dataclass(frozen=True)
class Measured:
    seconds: float
    main_mb: float
    workers_mb: float
    output: str  # stdout and stderr, without the measurement line
    returncode: int


def run_measured(args: list[str], body: str = CLI) -> Measured:
    """Wall time and peak RSS (MB) of ``body`` (Python reading ``sys.argv``) run on ``args``."""
    code = _WRAPPER.format(body="".join(f"    {line}\n" for line in body.splitlines()))
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - began
    lines = done.stdout.splitlines()
    peak = next((line for line in lines if line.startswith("PEAK-RSS-KB")), None)
    if peak is None:
        raise RuntimeError(f"no measurement from {args}: {done.stderr.strip()[-2000:]}")
    main_kb, workers_kb = (int(v) for v in peak.split()[1:])
    output = "\n".join([*(line for line in lines if line is not peak), done.stderr])
    return Measured(seconds, main_kb / 1024, workers_kb / 1024, output, done.returncode)
