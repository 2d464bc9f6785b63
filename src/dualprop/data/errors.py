"""The exception raised for missing, corrupt or unsafe dataset files."""


class DataError(ValueError):
    """A dataset file is missing, truncated, corrupt or carries something other than data (a
    ``ValueError``: the data handed in is what has to change)."""
