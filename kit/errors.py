"""The one exception type that means "the user's input is wrong": exit code 2, one line."""


class KitError(Exception):
    """A problem the user can fix; its message names the problem and the fix."""
