"""User-facing errors.

Every problem caused by input the user controls (a corpus file, a config field, a
ds_config) raises one of these with a message that names the file, line or field.
The command line prints the message and exits with status 2; nothing else is caught.
"""


class MassiveMTError(Exception):
    """Base class: an error in user input, reported without a traceback."""


class DataError(MassiveMTError):
    """A corpus, catalogue or token file is missing, empty, malformed or inconsistent."""


class ConfigError(MassiveMTError):
    """An experiment config or ds_config field is of the wrong type, out of range or contradictory."""
