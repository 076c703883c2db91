"""`python -m sftune ...` is the `sftune` command."""

from sftune.cli import app

app()
