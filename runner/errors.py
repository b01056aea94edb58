"""The user-facing error channel: one sentence, no traceback, a definite exit code.

Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; they follow pytest's."""

    OK = 0
    TESTS_FAILED = 1
    INTERRUPTED = 2
    INTERNAL = 3
    USAGE = 4
    NO_TESTS = 5


class UserError(Exception):
    """A problem the user can fix: bad input, a missing engine, an unreachable cluster."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(UserError):
    """The matrix file is wrong: the message names the file, the key path and, where known, the line."""

    def __init__(self, file: str, key: str, problem: str, line: int | None = None) -> None:
        where = f"{file}:{line}" if line else file
        keypart = f" {key}:" if key else ""
        super().__init__(f"{where}:{keypart} {problem}", ExitCode.USAGE)
        self.file = file
        self.key = key
        self.line = line


class EnvironmentProblem(UserError):
    """The machine cannot run the matrix: no Docker engine, no Ray cluster, no base image."""

    exit_code = ExitCode.INTERNAL
