"""The one error type for user mistakes: a single sentence naming the thing and the fix."""


class UserError(Exception):
    """Bad input from the user. The message is one sentence that names the thing and the fix.

    The CLI prints it to stderr and exits with code 2; the TUI shows it as a notification.
    """


class JobFailed(Exception):
    """A job ran and failed (the CLI's exit code 1)."""
