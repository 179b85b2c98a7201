"""Logging a failure without leaking personal data.

Exception texts can carry record contents (a customer id in a KeyError, say),
and nothing personal may appear in a log line at INFO or above. So the ERROR
line names only where it happened and the exception's type; the traceback,
with its text, goes to DEBUG.
"""

from __future__ import annotations

import logging


def log_failure(logger: logging.Logger, error: BaseException, message: str, *args: object) -> None:
    logger.error(message + " (%s)", *args, type(error).__name__)
    logger.debug("traceback of the failure above", exc_info=error)
