"""The one exception type for bad user input.

Library code raises ``InputError`` with a one-line message that names the problem and the fix;
the CLI prints it and exits with status 2. It subclasses ``ValueError`` so library users can
catch it the ordinary way.
"""


class InputError(ValueError):
    """Bad input from the user: the message says what is wrong and how to fix it."""
