"""Exceptions raised by the model core.

``InputError`` and its subclasses describe something wrong with what a user sent (the service maps
them to HTTP 4xx, the CLI to a message and a non-zero exit code); ``BundleError`` describes a model
bundle that is missing, incomplete or tampered with.
"""

EXIT_INPUT = 2
"""Exit code of every ``celltype`` command refused with a :class:`CellTypeError`: a one-line message says
what to fix."""


class CellTypeError(Exception):
    """Base class of every error this project raises on purpose."""


class InputError(CellTypeError, ValueError):
    """The input data is unusable as given; the message says what to fix."""


class InputKindError(InputError):
    """The values do not match the declared input kind (raw counts vs log-normalized)."""


class GeneMismatchError(InputError):
    """The input's genes cannot be aligned to the model's genes (duplicates, too little overlap)."""


class BundleError(CellTypeError):
    """A model bundle is missing, incomplete, of an unknown format or fails its checksum."""
