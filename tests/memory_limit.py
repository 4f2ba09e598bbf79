"""Run a piece of Python in a subprocess under an address-space limit, for the tests of memory
bombs: a regression fails fast with a MemoryError (or is killed) instead of exhausting a machine
shared with other jobs, and a hang ends at the timeout.

`run_limited(code, headroom_mb, timeout)`: `code` runs after `setup` (imports) once the address
space it holds then plus `headroom_mb` is set as RLIMIT_AS. The child reports its peak resident
memory above that point (`rss_mb`: VmHWM, reset then through /proc/self/clear_refs) on the last
line of stdout; `code` may call `reset_peak()` and `peak_mb()` itself.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

_PRELUDE = """
import json, resource, sys
sys.path[:0] = [{repo!r}, {tests!r}]
{setup}
def _status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1]) * 1024
def reset_peak():
    global _rss0
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # VmHWM := VmRSS
    _rss0 = _status('VmRSS')
def peak_mb():
    return (_status('VmHWM') - _rss0) / 2**20
_hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (_status('VmSize') + {headroom} * 2**20, _hard))
reset_peak()
{code}
print(json.dumps({{"rss_mb": peak_mb()}}))
"""


def run_limited(code: str, *, setup: str = "", headroom_mb: int = 512, timeout: float = 60,
                env: dict | None = None) -> tuple[subprocess.CompletedProcess, float | None]:
    """(the finished child, its peak resident memory in MB above the limit's start, or None if
    it did not get that far)."""
    script = _PRELUDE.format(repo=str(REPO), tests=str(REPO / "tests"), setup=setup,
                             headroom=headroom_mb, code=code)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=timeout, env=env)
    lines = done.stdout.strip().splitlines()
    rss = json.loads(lines[-1])["rss_mb"] if done.returncode == 0 and lines else None
    return done, rss
