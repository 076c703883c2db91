"""`python -m sftune ...` is the `sftune` command, with the same error handling."""

from sftune.cli import main

main()
