"""TemplateError: a conversation a template cannot render, or a template that is not usable."""

from sftune.errors import UserError


class TemplateError(UserError, ValueError):
    """A conversation the template cannot render, or a template that is not usable; says what to use instead."""
