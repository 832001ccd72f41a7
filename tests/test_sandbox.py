"""The sandbox for model-written programs (PAL): refusals before running, limits while running,
the inner layers with the AST check switched off, and a parent process that keeps working."""

import math
import os

import pytest

from gencycle.integrate import DEFAULT_ALLOWED, check_program, run_python

# Finds a module-level name through the classic escape; only for runs with the AST check off.
ESCAPE = """
def find(name):
    for c in ().__class__.__mro__[1].__subclasses__():
        try:
            g = c.__init__.__globals__
        except AttributeError:
            continue
        if name in g:
            return g[name]
sys = find('sys')
"""


def test_a_legitimate_program_gives_its_printed_answer():
    result = run_python("import math\nprint(sum(math.sqrt(i) for i in range(10)))")
    assert result.ok and result.reason == "ok" and result.error == ""
    assert result.answer == str(sum(math.sqrt(i) for i in range(10)))
    assert result.exit_code == 0 and result.seconds < 10


def test_everyday_python_passes_the_check_and_runs():
    source = """
from collections import namedtuple, Counter
from fractions import Fraction
import datetime, functools, statistics

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def __repr__(self):
        return f"Point({self.x}, {self.y})"

@functools.lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

if __name__ == "__main__":
    P = namedtuple("P", "a b")
    day = datetime.datetime.strptime("2024-03-01", "%Y-%m-%d")
    print(Point(1, 2), type(Point(0, 0)).__name__, P(1, 2), Counter("abca").most_common(1))
    print(fib(50), Fraction(1, 3) + Fraction(1, 6), statistics.median([3, 1, 2]), day.strftime("%A"))
"""
    assert check_program(source) == []
    result = run_python(source)
    assert result.ok, result.error
    assert result.stdout.splitlines() == ["Point(1, 2) Point P(a=1, b=2) [('a', 2)]", "12586269025 1/2 2 Friday"]


REFUSED = [
    ("().__class__.__mro__[1].__subclasses__()", "Attribute '.__class__'"),
    ("().__class__.__mro__[1].__subclasses__()", "Attribute '.__subclasses__'"),
    ("print(open('/etc/passwd').read())", "Name 'open' is refused: file access"),
    ("import socket", "Import 'socket' is refused: 'socket' is not in the allow list"),
    ("import os\nos.system('echo hi')", "line 1: Import 'os' is refused"),
    ("from os import system", "ImportFrom 'from os' is refused"),
    ("import subprocess, sys", "Import 'subprocess'"),
    ("from . import x", "relative imports"),
    ("__import__('os')", "Name '__import__' is refused"),
    ("eval('1+1')", "Name 'eval' is refused"),
    ("exec('x = 1')", "Name 'exec' is refused"),
    ("compile('1', 'f', 'eval')", "Name 'compile' is refused"),
    ("getattr(1, '__class__')", "Name 'getattr' is refused: attribute access by name"),
    ("setattr(int, 'x', 1)", "Name 'setattr' is refused"),
    ("print(globals())", "Name 'globals' is refused"),
    ("print(vars())", "Name 'vars' is refused"),
    ("breakpoint()", "Name 'breakpoint' is refused"),
    ("x = input()", "Name 'input' is refused"),
    ("memoryview(b'x')", "Name 'memoryview' is refused"),
    ("print(__builtins__)", "Name '__builtins__' is refused"),
    ("import random\nprint(random._os)", "line 2: Attribute '._os' is refused: private attribute"),
    ("g = (i for i in [1])\nprint(g.gi_frame.f_back)", "line 2: Attribute '.gi_frame' is refused: frame"),
    ("import operator\noperator.attrgetter('__class__')(1)", "Attribute '.attrgetter' is refused"),
    ("from functools import update_wrapper", "ImportFrom name 'update_wrapper' is refused"),
    ("from string import Formatter", "ImportFrom name 'Formatter' is refused"),
    ("class A:\n    def __getattr__(self, n):\n        return 1", "line 2: FunctionDef '__getattr__' is refused"),
    ("match 1:\n    case int(__class__=c):\n        pass", "line 2: MatchClass pattern attribute '__class__'"),
    ("def f(:\n    pass", "line 1: syntax error"),
    ("x = 1\ny = (\n", "syntax error"),
]


@pytest.mark.parametrize("source, expected", REFUSED, ids=[f"{i}:{s[:30]}" for i, (s, _) in enumerate(REFUSED)])
def test_each_escape_attempt_is_refused_before_it_runs(source, expected):
    problems = check_program(source)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("line ") for p in problems)
    result = run_python("print('this must not run')\n" + source)
    assert result.reason == "refused" and not result.ok
    assert result.stdout == "" and result.exit_code is None      # no process was started
    assert "refused before running" in result.error and result.problems


def test_module_attributes_that_are_modules_are_gone_at_run_time():
    result = run_python("import fractions, statistics, re\n"
                        "print(hasattr(fractions, 'sys'), hasattr(statistics, 'random'), hasattr(re, 'enum'))\n"
                        "print(fractions.sys)")
    assert result.reason == "error"
    assert result.stdout == "False False False\n"
    assert "module 'fractions' has no attribute 'sys' in the sandbox" in result.error
    assert "line 3" in result.error


def test_an_infinite_loop_ends_within_its_wall_time_limit():
    result = run_python("while True:\n    pass", timeout_s=1.0, cpu_s=30)
    assert result.reason == "timeout" and not result.ok
    assert "wall-time limit" in result.error and "1 s" in result.error
    assert result.seconds < 1.0 + 2.0


def test_the_cpu_time_limit_stops_a_busy_program():
    result = run_python("x = 0\nwhile True:\n    x += 1", timeout_s=30, cpu_s=1)
    assert result.reason == "timeout"
    assert "CPU-time limit" in result.error and result.exit_code < 0
    assert result.seconds < 10


@pytest.mark.parametrize("source", ["x = bytearray(2 * 1024**3)", "x = [0] * 10**10"])
def test_allocating_too_much_memory_is_stopped(source):
    result = run_python(source, memory_mb=256)
    assert result.reason == "memory" and not result.ok
    assert "memory limit" in result.error and "256 MB" in result.error and "MemoryError" in result.error
    assert "line 1" in result.error


@pytest.mark.parametrize("source", ["print('x' * 10**7)", "while True:\n    print('spam')"])
def test_printing_megabytes_is_stopped_and_cut_at_the_cap(source):
    result = run_python(source, max_output_bytes=10_000, timeout_s=10)
    assert result.reason == "output" and not result.ok
    assert len(result.stdout.encode()) == 10_000
    assert "output limit" in result.error and "10000 bytes" in result.error
    assert result.seconds < 5


def test_a_program_error_names_the_exception_and_the_line():
    result = run_python("x = 1\ny = x / 0\nprint(y)")
    assert result.reason == "error" and result.exit_code != 0
    assert result.error == "ZeroDivisionError: division by zero (line 2: y = x / 0)"
    assert run_python("raise SystemExit(3)").reason == "error"
    assert run_python("raise SystemExit(0)").ok


@pytest.mark.parametrize("kwargs, message", [({"timeout_s": 0}, "timeout_s"), ({"memory_mb": 1}, "memory_mb"),
                                             ({"cpu_s": 0}, "cpu_s"), ({"max_output_bytes": 0}, "max_output_bytes")])
def test_bad_limits_get_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_python("print(1)", **kwargs)
    with pytest.raises(TypeError, match="source must be a str"):
        run_python(b"print(1)")


def test_unparseable_programs_do_not_hurt_the_parent():
    for source in ["-" * 90_000 + "1", "x" + ".a" * 30_000, "a\x00b", "x = 1\n" * 30_000]:
        problems = check_program(source)
        assert len(problems) == 1 and problems[0].startswith("line 1:")


# ---- the inner layers: the same attempts with the AST check switched off (testing only)

def test_without_the_ast_check_imports_outside_the_allow_list_are_still_refused():
    for source in ["import os\nos.system('echo hi')", "__import__('os')", "import socket",
                   "try:\n    import os\nexcept ImportError:\n    pass\nprint('caught')"]:
        result = run_python(source, _unchecked=True)
        assert result.reason == "refused", (source, result)
        assert "import of 'os' is refused" in result.error or "import of 'socket' is refused" in result.error
        assert "ast-check" not in result.isolation


def test_without_the_ast_check_builtins_for_files_and_code_are_missing():
    for name, call in [("open", "open('/etc/passwd')"), ("eval", "eval('1')"), ("getattr", "getattr(1, 'real')")]:
        result = run_python(f"print({call})", _unchecked=True)
        assert result.reason == "error" and f"NameError: name '{name}' is not defined" in result.error


def test_without_the_ast_check_the_audit_hook_stops_an_escape(tmp_path):
    marker = tmp_path / "escaped"
    attempts = {
        f"sys.modules['os'].system('touch {marker}')": "'os.system' is refused",
        "print(sys.modules['io'].open('/etc/passwd').read())": "opening '/etc/passwd'",
        f"sys.modules['io'].open('{marker}', 'w').write('x')": f"opening '{marker}' (mode 'w')",
        "print(sys.modules['posix'].fork())": "'os.fork' is refused",
        "print(sys.modules['posix'].listdir('/'))": "'os.listdir' is refused",
        "print(sys.modules['builtins'].__import__('socket'))": "import of 'socket' is refused",
        "print(sys.modules['builtins'].__import__('ctypes'))": "import of 'ctypes' is refused",
        "g = (i for i in [1])\nprint(g.gi_frame)": "reading '.gi_frame' is refused",
        "print(sys._getframe())": "ValueError: frames are not available",
    }
    for attack, expected in attempts.items():
        result = run_python(ESCAPE + attack, _unchecked=True)
        assert expected in result.error, (attack, result)
        assert result.reason in ("refused", "error") and "root:" not in result.stdout
    assert not marker.exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the user switch needs root")
def test_as_root_the_child_runs_as_nobody_in_a_temporary_folder_removed_afterwards():
    result = run_python(ESCAPE + "posix = sys.modules['posix']\nprint(posix.getuid(), posix.getgid())\n"
                        "print(posix.getcwd())", _unchecked=True)
    assert result.ok, result.error
    ids, cwd = result.stdout.splitlines()
    assert ids != "0 0" and "user-nobody" in result.isolation
    assert "gencycle-sandbox-" in cwd and not os.path.exists(cwd)


def test_the_parent_survives_every_attempt_and_still_runs_programs():
    parent = os.getpid()
    bad = ["while True: pass", "x = bytearray(2 * 1024**3)", "print('x' * 10**7)", "import os",
           "().__class__.__mro__[1].__subclasses__()", "1/0", ESCAPE + "os = sys.modules['os']\nos.kill(os.getppid(), 9)"]
    reasons = [run_python(source, timeout_s=1, _unchecked=i == len(bad) - 1).reason for i, source in enumerate(bad)]
    assert reasons == ["timeout", "memory", "output", "refused", "refused", "error", "refused"]
    assert os.getpid() == parent
    assert run_python("print(6 * 7)").answer == "42"


def test_the_allow_list_can_be_narrowed_or_widened():
    assert "math" in DEFAULT_ALLOWED and "os" not in DEFAULT_ALLOWED
    assert run_python("import math\nprint(1)", allowed_imports={"re"}).reason == "refused"
    assert run_python("import json\nprint(json.dumps([1]))", allowed_imports={"json"}).answer == "[1]"
