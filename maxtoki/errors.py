"""User-facing errors: the CLI prints these as one clear message instead of a traceback."""


class MaxtokiError(Exception):
    """Bad input or an unusable environment; the message says what is wrong and what to do."""


class InputFileError(MaxtokiError):
    """A problem with one input file; the message always starts with the file's path."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem))
