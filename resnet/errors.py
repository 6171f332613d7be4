"""The one kind of error a learner is meant to read: a bad image, dataset, checkpoint or setting, or a full room.

Everything the package refuses on purpose raises a `UserError` (or a subclass) with a message written for the
learner, in English and, where given, in Chinese. Any other exception is a bug or a library's internals: the app
logs it and shows only a request id.
"""


class UserError(ValueError):
    """Something the user can fix; `str(error)` is the message they see, `zh` the same in Chinese (if given).
    A ValueError, so plain callers still catch it as one."""

    def __init__(self, message: str, zh: str | None = None):
        super().__init__(message)
        self.zh = zh

    def text(self, lang: str = "en") -> str:
        return self.zh if lang == "zh" and self.zh else str(self)
