"""Process trees from /proc: whom to signal when a service forks (backends, pool children)."""

from __future__ import annotations

import glob


def _parents() -> dict[int, tuple[int, str]]:
    table = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                head, tail = fh.read().rsplit(")", 1)
            with open(stat[:-4] + "cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(stat.split("/")[2])] = (int(tail.split()[1]), cmdline)
    return table


def children(pid: int) -> list[int]:
    return [child for child, (parent, _) in _parents().items() if parent == pid]


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid`, with its command line."""
    table = _parents()
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, cmdline) in table.items():
            if ppid == parent and child not in found:
                found[child] = cmdline
                frontier.append(child)
    return found


def running(pid: int) -> bool:
    """Whether `pid` has not ended (a zombie waiting for its parent to reap it has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
