"""The exception raised for missing, corrupt or unsafe dataset files."""


class DataError(Exception):
    """A dataset file is missing, truncated, corrupt or carries something other than data."""
