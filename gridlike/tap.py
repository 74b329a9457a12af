"""
The C{twistd gridlike} entry points, at their public import path; they live in
L{gridlike.server.tap}.
"""

from gridlike.server.tap import Options, makeService

__all__ = ["Options", "makeService"]
