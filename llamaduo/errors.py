"""Errors the CLI maps to exit codes (2 = bad config or data)."""


class InputError(Exception):
    """Invalid config or data. The message names the file, line/row and field."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, field: str | None = None):
        self.file, self.line, self.field, self.message = file, line, field, message
        where = ""
        if file:
            where = str(file)
            if line is not None:
                where += f", line {line}"
            if field:
                where += f", field '{field}'"
            where += ": "
        elif field:
            where = f"field '{field}': "
        super().__init__(where + message)
