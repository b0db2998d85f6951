"""The toolkit's one error type for bad settings: it carries the parameter it is about.

Library code names *parameters* (the fields of configs and jobs), never command-line
flags; the front doors (`heldout.app`) map a parameter to the flag a user typed by
looking at `ParameterError.parameter`, never by reading the message. It subclasses
`ValueError`, so callers that catch `ValueError` keep working.
"""

from __future__ import annotations

_NO_VALUE = object()


class ParameterError(ValueError):
    """An invalid setting, naming the parameter it came from and what was expected.

    ``str()`` is ``"<parameter>=<value>: <message>"`` (or ``"<parameter>: <message>"``
    when no value is given), the one line a user reads.

    Args:
        parameter: the parameter's name (``"learning_rate"``, ``"eval_indices"``).
        message: what was wrong and what was expected.
        value: the offending value, shown after ``=``; omitted when not given.
    """

    def __init__(self, parameter: str, message: str, value: object = _NO_VALUE):
        self.parameter = parameter
        self.message = message
        self.value = value
        super().__init__(self.render(parameter))

    @property
    def has_value(self) -> bool:
        return self.value is not _NO_VALUE

    def render(self, name: str) -> str:
        """The message with the parameter shown as `name` (e.g. its flag ``--seed``)."""
        shown = f"{name}={self.value}" if self.has_value else name
        return f"{shown}: {self.message}"
