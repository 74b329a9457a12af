"""
The GridLike server: everything that runs inside C{twistd gridlike}.

Data flows one way: HTTP (L{api}, L{upload}) -> L{registry} + L{storage} ->
L{dispatch} -> worker protocol (L{workers}) -> L{registry} + L{storage} ->
HTTP.  docs/architecture.md walks through the rooms and who may call whom.
Nothing here imports L{gridlike.client}; both sides share only
L{gridlike.wire}.
"""
