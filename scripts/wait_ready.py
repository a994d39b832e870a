"""Wait until a Ringfence web process says it is ready: `wait_ready.py URL [SECONDS]`.

GETs URL (the process's /readyz) every half second until it answers 200, for at most SECONDS
(default 60). Exit 0 when ready; 1 with the last answer (which dependency failed) when time runs
out. The web unit runs it after start (ExecStartPost), so `systemctl start` returns once the
process can serve, and a process that cannot reach its database is restarted instead of kept.
Standard library only.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    url, seconds = argv[0], float(argv[1]) if len(argv) == 2 else 60.0
    deadline, last = time.monotonic() + seconds, "no answer"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return 0
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read(500).decode(errors='replace')}"
        except OSError as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            print(f"{url} not ready after {seconds:g} s: {last}", file=sys.stderr)
            return 1
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
