"""The one error type of a user mistake, and the import of an optional extra
that names the extra to install when it is missing (`optional_import`).

Every check of the user's input (config, data set, checkpoint, prompt, a
tool's flags) raises a `JaxGPTError` whose message is one line naming the
problem and the fix; the command-line entry points print it as `error: ...`
and exit 1, with no traceback. Anything else that escapes is a bug in
jaxgpt, and keeps its traceback.
"""

import importlib
import types


class JaxGPTError(Exception):
  """A user mistake (bad config, missing data, ...): printed as one line, no traceback."""


def optional_import(name: str, purpose: str, extra: str, *, instead: str = '',
                    error: type[JaxGPTError] = JaxGPTError) -> types.ModuleType:
  """The module `name`, from one of jaxgpt's optional extras (pyproject.toml);
  missing, an error saying what needs it and how to install it, or `instead`."""
  try:
    return importlib.import_module(name)
  except ImportError:
    package = name.split('.')[0]
    raise error(f'{purpose} needs {package}: pip install -e ".[{extra}]"' + (f', or {instead}' if instead else '')) \
        from None
