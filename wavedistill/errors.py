"""The one exception type that means "the user gave us something we cannot use".

The CLI turns a :class:`UserError` into a one-line message on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a file, a config key, a checkpoint. The message is one line
    that names the file or key and says what is wrong."""
