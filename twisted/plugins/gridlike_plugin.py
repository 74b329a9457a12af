"""
The C{twistd gridlike} plugin.

It stays cheap to import: twistd imports every plugin to list them, so the
real work lives in L{gridlike.server.tap}, imported only when this one is chosen.
"""

from twisted.application.service import ServiceMaker

gridlike = ServiceMaker(
    "GridLike", "gridlike.server.tap", "Run the GridLike job server.", "gridlike"
)
