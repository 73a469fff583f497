"""One-line errors with exit codes: the CLI never shows a traceback for a user mistake."""

from __future__ import annotations

import sys
from typing import NoReturn

from dsguard.errors import ConfigError

EXIT_CLEAN = 0
EXIT_FLAGGED = 1
EXIT_ERROR = 2


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    sys.stderr.write(f"dsguard: {message}\n")
    raise SystemExit(code)


def fail_config(exc: ConfigError) -> NoReturn:
    for problem in exc.problems:
        sys.stderr.write(f"dsguard: config {exc.source}: {problem}\n")
    raise SystemExit(EXIT_ERROR)
