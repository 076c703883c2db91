"""The `sftune` command. Thin: each module parses one command's arguments and calls the module that does the
work. A new command is a new module here, imported below so that it registers itself on `app`."""

from sftune.cli.common import app, console, main

# Importing a command module registers its commands on `app` (order = order in `sftune --help`).
from sftune.cli import train, data, template, serve, evaluate, inference, export, estimate, webui  # noqa: E402,F401  isort: skip

__all__ = ["app", "console", "main"]
