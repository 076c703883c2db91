"""The root of every error a user causes and fixes: bad data, a wrong configuration, path, model name,
template or evaluation task. Its message says what was wrong, where, and what to do. The `sftune` command
ends on one with that message and exit code 2 (sftune.cli.common); any other exception is a bug (exit 1)."""


class UserError(Exception):
    """A mistake in what the user gave sftune; each module's user errors derive from it."""
