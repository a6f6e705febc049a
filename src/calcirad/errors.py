"""Errors that name what failed, so a researcher knows which subject, series and file to look at."""

from __future__ import annotations


class CalciradError(Exception):
    """Base class of every error calcirad raises on purpose."""


class SubjectInputError(CalciradError):
    """Bad input for one subject: that subject fails this stage, the others go on.

    The message always names the subject, the stage, and where known the series and file,
    followed by what the researcher can do about it.
    """

    def __init__(
        self,
        reason: str,
        *,
        subject: str | None = None,
        stage: str | None = None,
        series: str | None = None,
        file: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.reason = reason
        self.subject = subject
        self.stage = stage
        self.series = series
        self.file = file
        self.hint = hint
        super().__init__(self._message())

    def __str__(self) -> str:
        # Built on demand: a caller may fill in the subject or stage after the error was raised.
        return self._message()

    def _message(self) -> str:
        where = [
            f"{name} {value}"
            for name, value in (
                ("subject", self.subject),
                ("stage", self.stage),
                ("series", self.series),
                ("file", self.file),
            )
            if value
        ]
        text = f"[{', '.join(where)}] {self.reason}" if where else self.reason
        if self.hint:
            text += f" -> {self.hint}"
        return text


class ConfigError(CalciradError):
    """Invalid configuration or sample sheet: the run stops before any job starts."""
