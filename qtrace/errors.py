"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class QtraceError(Exception):
    """A problem with the user's input or environment, stated in one line."""

    exit_code = 2


class TraceFormatError(QtraceError):
    """The file is not a readable Kineto / torch.profiler Chrome trace."""


class RunFolderError(QtraceError):
    """An output folder that cannot be used (exists, incomplete, not a run)."""
