"""The one error type of a user mistake.

Every check of the user's input (config, data set, checkpoint, prompt, a
tool's flags) raises a `JaxGPTError` whose message is one line naming the
problem and the fix; the command-line entry points print it as `error: ...`
and exit 1, with no traceback. Anything else that escapes is a bug in
jaxgpt, and keeps its traceback.
"""


class JaxGPTError(Exception):
  """A user mistake (bad config, missing data, ...): printed as one line, no traceback."""
