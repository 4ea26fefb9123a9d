"""Run a user's script or module unchanged, in this process, under a `Recorder` (as
`python -m cProfile` does): its own sys.argv, sys.path[0], stdout/stderr and traceback; its exit
code becomes ours."""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from pathlib import Path

from qtrace.capture.record import Recorder
from qtrace.errors import QtraceError


def split_target(argv: list[str]) -> tuple[str, bool, list[str]]:
    """(script path or module name, is_module, its arguments) from `[python] SCRIPT ARGS` or `[python] -m MOD ARGS`."""
    args = list(argv)
    if args and Path(args[0]).name.startswith("python"):
        args = args[1:]
    if not args:
        raise QtraceError("qtrace run: give the script to run, e.g. qtrace run -- python train.py --epochs 1")
    if args[0] == "-m":
        if len(args) < 2:
            raise QtraceError("qtrace run: -m needs a module name")
        return args[1], True, args[2:]
    if args[0].startswith("-"):
        raise QtraceError(f"qtrace run: interpreter option {args[0]!r} is not supported; give a script or -m module")
    if not Path(args[0]).is_file():
        raise QtraceError(f"qtrace run: {args[0]}: no such script")
    return args[0], False, args[1:]


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # what the interpreter does with sys.exit("message")
    return 1


def _print_user_traceback(exc: BaseException, script: str | None) -> None:
    """The traceback from the script's own frames on, as `python script.py` would print it."""
    tb = exc.__traceback__
    if script is not None:
        target = os.path.abspath(script)
        t = tb
        while t is not None and os.path.abspath(t.tb_frame.f_code.co_filename) != target:
            t = t.tb_next
        tb = t or tb
    else:  # a module: drop qtrace's and runpy's frames
        while tb is not None and (tb.tb_frame.f_code.co_filename.endswith(("runpy.py", "run_script.py"))):
            tb = tb.tb_next
        tb = tb or exc.__traceback__
    traceback.print_exception(type(exc), exc, tb)


def run_script(argv: list[str], out: str | None, force: bool, skip: int, steps: int, command: list[str]) -> int:
    target, is_module, args = split_target(argv)
    rec = Recorder(out, skip, steps, force, command=command)
    saved_argv, saved_path0 = sys.argv, sys.path[0] if sys.path else None
    sys.argv = [target if not is_module else target, *args]
    if not is_module and sys.path:
        sys.path[0] = os.path.dirname(os.path.abspath(target))
    code = 0
    with rec:
        try:
            if is_module:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
        except SystemExit as exc:
            code = _exit_code(exc)
            if code:
                rec.failed = f"SystemExit({code})"
        except KeyboardInterrupt:
            code = 130
            rec.failed = "KeyboardInterrupt"
            print("KeyboardInterrupt", file=sys.stderr)
        except BaseException as exc:
            code = 1
            rec.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
            _print_user_traceback(exc, None if is_module else target)
        finally:
            sys.argv = saved_argv
            if saved_path0 is not None:
                sys.path[0] = saved_path0
            rec.exit_code = code
            sys.stdout.flush()
    return code
