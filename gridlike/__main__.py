"""C{python -m gridlike}: the C{gridlike} command."""

from gridlike.client.cli import main

main()
