"""Errors the command line turns into one-line messages and exit statuses, without tracebacks."""

EXIT_USER_ERROR = 2
EXIT_RUN_FAILURE = 3


class UserError(Exception):
    """A problem with the user's input or files: exit status 2, nothing written."""


class RunFailure(Exception):
    """The run could not go on (non-finite latents, full disk): exit status 3, last good state kept."""
