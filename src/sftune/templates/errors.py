"""TemplateError: a conversation a template cannot render, or a template that is not usable."""


class TemplateError(ValueError):
    """A conversation the template cannot render, or a template that is not usable; says what to use instead."""
