"""The one exception type for problems the user fixes: bad input, files that do not belong together, a bad config.

Its message names the file, the row or key, what is wrong and the fix. The console command prints it as one
line and exits with status 2; every other exception is a bug in recbase and keeps its traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input, mismatched files or a bad config, with a message that locates it and says what to do."""
