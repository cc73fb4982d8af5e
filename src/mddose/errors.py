"""The one error type users see.

Every problem with user input (a missing file, a corrupt CSV, a checkpoint for another architecture) is raised
as :class:`MddoseError` with a one-line message that names the file and what is wrong. The CLI prints that line
and exits non-zero; a traceback is reserved for bugs.
"""

from __future__ import annotations

from pathlib import Path


class MddoseError(Exception):
    """A user-facing error whose message is one line naming the file and the problem."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        message = " ".join(str(message).split())  # always one line
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.path = Path(path) if path is not None else None
        self.reason = message

    def moved(self, tmp: Path, final: Path) -> MddoseError:
        """The same error naming the file where it was to land, when it names one in the temporary folder ``tmp``
        that was to become ``final`` (the user never sees that name)."""
        if self.path is None or not self.path.is_relative_to(tmp):
            return self
        return MddoseError(self.reason, final / self.path.relative_to(tmp))
