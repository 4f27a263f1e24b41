"""Real-machine harness for the benchmarks: shaped links between network namespaces
(`netns`), a user-space delay proxy (`delay`), and CPU-limited processes (`cgroup`).

Each piece is a context manager that cleans up after itself, also on error and Ctrl-C, and
raises `HarnessUnavailable` (with the reason) where the machine cannot provide it (not root,
no `ip netns`, no cgroup v1 cpu controller).
"""

from __future__ import annotations


class HarnessUnavailable(RuntimeError):
    """This machine cannot run the harness piece (not root, a tool or controller missing)."""


__all__ = ["HarnessUnavailable"]
