"""The log formatters: what an operator reads on stderr."""

from __future__ import annotations

import logging
import sys

from receiver.logs import JsonFormatter, TextFormatter


def _failure_record() -> logging.LogRecord:
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        return logging.LogRecord(
            "receiver.webhooks", logging.ERROR, __file__, 1, "request failed", None, sys.exc_info()
        )


def test_both_formats_keep_the_traceback_of_a_failure() -> None:
    """RECEIVER_LOG_FORMAT=text dropped exc_info: a bug logged only its one-line message."""
    record = _failure_record()
    text = TextFormatter().format(record)
    assert text.startswith("error   receiver.webhooks: request failed")
    assert "Traceback (most recent call last)" in text and "RuntimeError: a bug" in text
    assert "RuntimeError: a bug" in JsonFormatter().format(record)
