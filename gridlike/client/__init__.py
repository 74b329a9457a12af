"""
The client side of GridLike: everything that talks to a server from outside.

C{gridlike.client} itself is the public Python client (PROTOCOL.md section
2): L{GridLikeClient}, asynchronous, and L{BlockingClient}, its synchronous
facade, with the errors they raise.  The rest of the package builds on it:

  - L{gridlike.client.http}: the asynchronous HTTP client;
  - L{gridlike.client.errors}: the errors it raises, by HTTP status;
  - L{gridlike.client.blocking}: the synchronous facade;
  - L{gridlike.client.worker}: the worker SDK (public as C{gridlike.worker});
  - L{gridlike.client.cli}, L{gridlike.client.agent}, L{gridlike.client.bench}:
    the C{gridlike} command and its C{worker} and C{bench} subcommands.

Nothing here imports the server; both sides share only L{gridlike.wire}.
"""

from gridlike.client.blocking import BlockingClient
from gridlike.client.http import (
    BadRequest,
    Conflict,
    Ended,
    GridLikeClient,
    GridLikeClientError,
    JobPage,
    NotFound,
    PartlySubmitted,
    PayloadTooLarge,
    ServerError,
    ServerUnreachable,
    Submitted,
    Unauthorized,
    Unavailable,
    error_for,
    save,
)

__all__ = [
    "BadRequest", "BlockingClient", "Conflict", "Ended", "GridLikeClient", "GridLikeClientError",
    "JobPage", "NotFound", "PartlySubmitted", "PayloadTooLarge", "ServerError",
    "ServerUnreachable", "Submitted", "Unauthorized", "Unavailable", "error_for", "save",
]
