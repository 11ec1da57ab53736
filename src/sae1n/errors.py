"""Error types shared by every stage.

Every error a user can cause (bad file, bad flag, missing weights) is a
:class:`Sae1nError`; the CLI prints its message without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class Sae1nError(Exception):
    """A problem the user can fix; the message says what and how."""


class InputFileError(Sae1nError, ValueError):
    """An input file is missing, unreadable or malformed.

    The message always names the file, the problem and the fix.
    """

    def __init__(self, path: str | Path, problem: str, fix: str = ""):
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        msg = f"{self.path}: {problem}"
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)


class ConfigError(Sae1nError, ValueError):
    """A configuration value or command-line option is invalid."""
