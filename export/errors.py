"""Errors of the export."""


class ExportError(Exception):
    """The export cannot go on; the message is one line that says what to do."""
