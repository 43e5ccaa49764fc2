"""
Plain-Python configuration, nanoGPT style, with errors that say what to do.

    python train.py config/train_shakespeare_char_cpu.py --batch_size=32 --compile=False

An argument without '=' is a Python file exec'd over the script's defaults; '--key=value' overrides one
default, and a bare '--flag' sets a True/False key to True. Values are parsed with ast.literal_eval and fall back to the raw string, except for keys whose default
is a string: those keep the raw text, so --start=42 is the prompt "42" and --caption="'a'" keeps its quotes.
Every key must already exist (a typo names the closest valid keys) and keep its default's type (an int is fine
for a float; a default of None accepts anything; None is accepted only where the default is None).
"""
import ast
import difflib
import sys


class ConfigError(ValueError):
    pass


def _closest(key, valid):
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else f" Valid keys: {', '.join(sorted(valid))}."


def _check_type(key, value, default):
    if default is None:
        return value
    if value is None:  # --batch_size=None would crash much later, far from the flag that caused it
        raise ConfigError(f"--{key}: expected {type(default).__name__} (default {default!r}), got None; "
                          f"None is only accepted where the default is None.")
    if isinstance(default, bool) or isinstance(value, bool):
        if type(value) is not type(default):
            raise ConfigError(f"--{key}: expected {type(default).__name__} (default {default!r}), "
                              f"got {type(value).__name__} {value!r}. Write --{key}=True or --{key}=False.")
        return value
    if isinstance(default, float) and isinstance(value, int):
        return float(value)  # --learning_rate=1 means 1.0
    if not isinstance(value, type(default)):
        raise ConfigError(f"--{key}: expected {type(default).__name__} (default {default!r}), "
                          f"got {type(value).__name__} {value!r}.")
    return value


def parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as --device=cuda


def configure(namespace, argv=None, keys=None, allow_new=False):
    """Apply config files and --key=value overrides to `namespace` (a script's globals()), in order.

    Only keys that exist in `namespace` with a plain value (int, float, bool, str, None, tuple, list, dict)
    and do not start with '_' are configurable, or only `keys` when given. allow_new: a config file may also
    set keys that are not there yet (a dict of settings read from another script's config, as speedrun.py does).
    Returns the dict of configurable keys and their values."""
    argv = sys.argv[1:] if argv is None else argv
    plain = (int, float, bool, str, type(None), tuple, list, dict)
    if keys is None:
        keys = [k for k, v in namespace.items() if not k.startswith('_') and isinstance(v, plain)]
    for arg in argv:
        if '=' not in arg and arg.startswith('--') and isinstance(namespace.get(arg[2:]), bool) and arg[2:] in keys:
            arg += '=True'  # a bare --flag switches a True/False key on
        if '=' not in arg:
            if arg.startswith('--'):
                raise ConfigError(f"{arg}: overrides are written --key=value.")
            try:
                source = open(arg).read()
            except OSError as e:
                raise ConfigError(f"cannot read config file {arg!r} ({e.strerror}). Config files live in config/.")
            scope = {k: namespace[k] for k in keys}
            exec(source, {}, scope)
            for k, v in scope.items():
                if k.startswith('_') or not isinstance(v, plain):
                    continue  # helpers and imports inside a config file are its own business
                if k not in keys:
                    if not allow_new:
                        raise ConfigError(f"{arg} sets unknown key {k!r}.{_closest(k, keys)}")
                    keys = list(keys) + [k]
                    namespace[k] = v
                    continue
                namespace[k] = _check_type(k, v, namespace[k])
        else:
            if not arg.startswith('--'):
                raise ConfigError(f"{arg}: overrides are written --key=value.")
            key, text = arg[2:].split('=', 1)  # split once: values may contain '='
            if key not in keys:
                raise ConfigError(f"unknown config key {key!r}.{_closest(key, keys)}")
            # a str default keeps the raw text: a prompt or caption that looks like a Python literal stays text
            value = text if isinstance(namespace[key], str) else parse_value(text)
            namespace[key] = _check_type(key, value, namespace[key])
    return {k: namespace[k] for k in keys}
