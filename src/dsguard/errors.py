"""The exception tree. Front doors turn these into one-line messages and exit codes."""

from __future__ import annotations


class DsguardError(Exception):
    """Base of every error dsguard raises on purpose."""


class ConfigError(DsguardError):
    """The configuration file or a command-line setting is wrong. One line per mistake."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class InputError(DsguardError):
    """An input (file, directory, export) could not be read. Names the input and the problem."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")
