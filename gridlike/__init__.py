"""
GridLike: a job server for improvised compute grids.

Clients submit opaque jobs over HTTP; workers connect out over WebSocket,
take jobs, and send results back.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
