"""Run a short, untrusted Python program (one a model wrote) and capture what it prints.

Program-aided answers (PAL) need this: the model writes a program for a question,
the sandbox runs it, and the program's printed output is the answer.

    result = run_python("import math\\nprint(math.factorial(10))")
    result.ok, result.reason, result.answer        # True, "ok", "3628800"

Layers of defence, outermost last; each one alone stops the attempts named:

1. `check_program` (in the parent, before anything runs): the AST may import only
   the allow list; no name or attribute starting with `__` (except `__name__`, and
   safe data-model methods defined in a class body) and no `_private` attribute;
   no `open`, `exec`, `eval`, `compile`, `getattr`, `globals`, `vars`, `input`, ...;
   no frame / code attributes (`gi_frame`, `f_back`, `tb_frame`, ...); no stdlib
   helpers that read attributes by name (`operator.attrgetter`,
   `functools.update_wrapper`, `string.Formatter`, ...).
2. The child's namespace: builtins without those names, an `__import__` that
   allows only the allow list and hands out copies of the modules without their
   private names, module attributes (`fractions.sys`) or by-name helpers.
3. An audit hook (PEP 578) armed just before the program runs: refuses opening
   files other than the standard library's for reading, every `os.*`,
   `subprocess.*`, `socket.*`, `ctypes.*` ... event, frame access
   (`gi_frame`, `tb_frame`, `sys._getframe`), and importing socket / ctypes / ...
4. The operating system: a child process (`python -I -S -B`: no environment
   variables, no site-packages) with an empty environment, its own session, cwd a
   fresh temporary folder; rlimits on CPU time, address space, file size (0),
   open files, processes (0: no fork) and core dumps; a wall-time limit and an
   output cap enforced by the parent, which kills the whole process group.
   When the parent is root, the child drops to user `nobody` (no writes to the
   machine's files) and, where `unshare -n` works, runs in a network namespace
   with no interfaces. `SandboxResult.isolation` says which layers were active.

Known limits: layers 1-3 live inside CPython; a flaw in the interpreter or in an
allowed C module gets past them, and `str.format` can still read (not call)
attributes by name (`"{0.__class__}".format(x)`). Past them, layer 4 alone leaves,
as `nobody`: reading world-readable files, creating empty files in world-writable
folders (/tmp), burning the limits; no fork or exec, no network. Without root there
is no user switch: the child then has the caller's file permissions (files cannot
grow, but could be truncated or removed). This is not a VM or a container.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_ALLOWED = frozenset({
    "math", "cmath", "statistics", "fractions", "decimal", "itertools", "functools", "collections",
    "datetime", "re", "random", "string", "operator", "heapq", "bisect",
})

# Builtins the program may not name: file access, code execution, introspection that
# defeats the dunder check, interaction.
_DENIED_NAMES = {
    "open": "file access is not allowed",
    "exec": "running generated code is not allowed", "eval": "running generated code is not allowed",
    "compile": "running generated code is not allowed",
    "globals": "namespace introspection is not allowed", "locals": "namespace introspection is not allowed",
    "vars": "namespace introspection is not allowed",
    "getattr": "attribute access by name is not allowed", "setattr": "attribute access by name is not allowed",
    "delattr": "attribute access by name is not allowed",
    "breakpoint": "the debugger is not available", "input": "the program gets no input",
    "help": "interactive help is not available", "memoryview": "raw memory views are not allowed",
    "exit": "the program ends by itself", "quit": "the program ends by itself",
    "copyright": "not available", "credits": "not available", "license": "not available",
}
# Attributes that lead to frames, code objects or tracebacks (and from there to every module).
_FRAME_ATTRS = frozenset({
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "cr_origin",
    "ag_frame", "ag_code", "ag_await", "f_back", "f_globals", "f_locals", "f_builtins", "f_code",
    "f_trace", "tb_frame", "tb_next", "co_code", "co_consts", "co_names",
})
# Allowed-module helpers that get or set attributes by a string name (so `"__globals__"` gets through).
_BY_NAME = {"functools": {"update_wrapper", "wraps", "singledispatch", "singledispatchmethod"},
            "operator": {"attrgetter", "methodcaller"}, "string": {"Formatter"}}
_BY_NAME_ATTRS = frozenset(set().union(*_BY_NAME.values()))
# Data-model methods a program may define in a class body (defining, not reaching through).
_SAFE_DUNDER_DEFS = frozenset(f"__{n}__" for n in (
    "init repr str eq ne lt le gt ge hash bool len iter next contains getitem setitem call "
    "add sub mul truediv floordiv mod pow neg pos abs radd rsub rmul rtruediv "
    "enter exit post_init".split()))
_MAX_SOURCE_CHARS = 100_000

# Child exit codes (the child's status; the program cannot choose them).
_EXIT_ERROR, _EXIT_MEMORY, _EXIT_REFUSED, _EXIT_SETUP = 10, 11, 12, 13


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run gave.

    reason: "ok" | "refused" (by the AST check or at run time) | "timeout" (wall or CPU time)
        | "memory" | "output" (printed more than the cap) | "error" (the program raised).
    stdout: what the program printed (cut at the output cap); error: a clear message, "" when ok.
    exit_code: the child's status (negative: killed by that signal); None when it never ran.
    """

    ok: bool
    reason: str
    stdout: str
    error: str
    stderr: str = ""
    exit_code: int | None = None
    seconds: float = 0.0
    problems: tuple[str, ...] = ()
    isolation: tuple[str, ...] = ()

    @property
    def answer(self) -> str | None:
        """The program's printed output, stripped: the PAL answer (None unless ok)."""
        return self.stdout.strip() if self.ok else None


# ---------------------------------------------------------------- layer 1: the AST check

def _import_problem(name: str, allowed: frozenset[str]) -> str | None:
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        if ".".join(parts[:i]) not in allowed:
            return f"'{name}' is not in the allow list ({', '.join(sorted(allowed))})"
    return None


def check_program(source: str, allowed_imports: Iterable[str] = DEFAULT_ALLOWED) -> list[str]:
    """The problems that refuse `source` before it runs, one message per node ("line N: ..."); [] if none."""
    allowed = frozenset(allowed_imports)
    if len(source) > _MAX_SOURCE_CHARS:
        return [f"line 1: program has {len(source)} characters; the limit is {_MAX_SOURCE_CHARS}"]
    try:
        tree = ast.parse(source, filename="<program>")
    except SyntaxError as e:
        return [f"line {e.lineno or 1}: syntax error: {e.msg}" + (f" (column {e.offset})" if e.offset else "")]
    except (ValueError, RecursionError, MemoryError) as e:
        detail = f"{type(e).__name__} {e}".rstrip()
        return [f"line 1: the program cannot be parsed (too deeply nested?): {detail}"]
    safe_defs = {id(f) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for f in c.body
                 if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) and f.name in _SAFE_DUNDER_DEFS}
    problems: list[str] = []

    def refuse(node: ast.AST, what: str, why: str) -> None:
        problems.append(f"line {getattr(node, 'lineno', 1)}: {type(node).__name__} {what} is refused: {why}")

    def check_identifier(node: ast.AST, name: str | None) -> None:
        if name and name.startswith("__") and name != "__name__":
            refuse(node, f"'{name}'", "names starting with '__' (dunder) are not allowed")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    refuse(node, f"'from {'.' * node.level}{node.module or ''}'", "relative imports are not allowed")
                    continue
                why = _import_problem(node.module or "", allowed)
                if why:
                    refuse(node, f"'from {node.module}'", why)
            for alias in node.names:
                if isinstance(node, ast.Import) and (why := _import_problem(alias.name, allowed)):
                    refuse(node, f"'{alias.name}'", why)
                elif isinstance(node, ast.ImportFrom) and alias.name.startswith("_"):
                    refuse(node, f"name '{alias.name}'", "private names ('_') are not allowed")
                elif isinstance(node, ast.ImportFrom) and alias.name in _BY_NAME_ATTRS:
                    refuse(node, f"name '{alias.name}'", "it reads attributes by name, defeating the dunder check")
                check_identifier(node, alias.asname)
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_") and node.attr != "__name__":
                kind = "dunder" if node.attr.startswith("__") else "private"
                refuse(node, f"'.{node.attr}'", f"{kind} attribute access is not allowed")
            elif node.attr in _FRAME_ATTRS:
                refuse(node, f"'.{node.attr}'", "frame, code and traceback internals are not allowed")
            elif node.attr in _BY_NAME_ATTRS:
                refuse(node, f"'.{node.attr}'", "it reads attributes by name, defeating the dunder check")
        elif isinstance(node, ast.Name):
            if node.id in _DENIED_NAMES:
                refuse(node, f"'{node.id}'", _DENIED_NAMES[node.id])
            else:
                check_identifier(node, node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if id(node) not in safe_defs:
                check_identifier(node, node.name)
        elif isinstance(node, ast.arg | ast.keyword):
            check_identifier(node, node.arg)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            for name in node.names:
                check_identifier(node, name)
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar):
            check_identifier(node, node.name)
        elif isinstance(node, ast.MatchMapping):
            check_identifier(node, node.rest)
        elif isinstance(node, ast.MatchClass):
            for attr in node.kwd_attrs:
                if attr.startswith("_") or attr in _FRAME_ATTRS:
                    refuse(node, f"pattern attribute '{attr}'", "private, dunder and frame attributes are not allowed")
    return problems


# ---------------------------------------------------------------- layer 4: the child process

def _unshare_prefix() -> list[str]:
    """`unshare -n` (root) or `unshare -r -n` (user namespaces) when it works here; [] otherwise."""
    global _UNSHARE
    if _UNSHARE is None:
        import shutil
        import subprocess
        _UNSHARE = []
        exe = shutil.which("unshare")
        if exe and sys.platform.startswith("linux"):
            cmd = [exe, "-n"] if os.geteuid() == 0 else [exe, "-r", "-n"]
            try:
                probe = subprocess.run([*cmd, sys.executable, "-I", "-S", "-c", "0"], stdin=subprocess.DEVNULL,
                                       capture_output=True, timeout=10, env={})
                if probe.returncode == 0:
                    _UNSHARE = cmd
            except (OSError, subprocess.SubprocessError):
                pass
    return list(_UNSHARE)


_UNSHARE: list[str] | None = None


def _nobody() -> tuple[int, int]:
    try:
        import pwd
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return 65534, 65534


def run_python(source: str, *, timeout_s: float = 5.0, cpu_s: int | None = None, memory_mb: int = 256,
               max_output_bytes: int = 64_000, allowed_imports: Iterable[str] = DEFAULT_ALLOWED,
               isolate_network: bool = True, _unchecked: bool = False) -> SandboxResult:
    """Check `source`, then run it in a limited child process and return what it printed.

    timeout_s: wall-clock limit; cpu_s: CPU-time limit (default: timeout_s rounded up);
    memory_mb: address-space limit of the child; max_output_bytes: stdout (and stderr) cap;
    allowed_imports: standard-library modules the program may import;
    isolate_network: run in a network namespace when `unshare -n` works here.
    `_unchecked` skips the AST check: for testing the inner layers only, never for real use.
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    cpu_s = max(1, int(-(-timeout_s // 1))) if cpu_s is None else cpu_s
    if cpu_s < 1:
        raise ValueError(f"cpu_s must be >= 1 (whole seconds), got {cpu_s}")
    if memory_mb < 32:
        raise ValueError(f"memory_mb must be >= 32 (the interpreter itself needs that), got {memory_mb}")
    if max_output_bytes < 1:
        raise ValueError(f"max_output_bytes must be >= 1, got {max_output_bytes}")
    allowed = frozenset(allowed_imports)
    started = time.monotonic()
    problems = () if _unchecked else tuple(check_program(source, allowed))
    if problems:
        return SandboxResult(False, "refused", "", "refused before running:\n" + "\n".join(problems),
                             seconds=time.monotonic() - started, problems=problems, isolation=("ast-check",))

    import shutil
    import tempfile
    workdir = tempfile.mkdtemp(prefix="gencycle-sandbox-")
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(source)
        config = {"program": os.path.join(workdir, "program.py"), "allowed": sorted(allowed),
                  "memory_bytes": memory_mb * 1024 * 1024, "cpu_s": cpu_s, "user": None}
        isolation = (() if _unchecked else ("ast-check",)) + ("restricted-builtins", "audit-hook", "rlimits")
        if os.name == "posix" and os.geteuid() == 0:
            config["user"] = _nobody()
            isolation += ("user-nobody",)
        prefix = _unshare_prefix() if isolate_network else []
        isolation += ("network-namespace",) if prefix else ()
        cmd = [*prefix, sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), json.dumps(config)]
        return _supervise(cmd, workdir, timeout_s, cpu_s, memory_mb, max_output_bytes, started, isolation)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _supervise(cmd, workdir, timeout_s, cpu_s, memory_mb, cap, started, isolation) -> SandboxResult:
    """Run the child, read its output with a cap, enforce the wall time, and say why it ended."""
    import selectors
    import signal
    import subprocess
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=workdir, env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
                                start_new_session=True, close_fds=True)
    except OSError as e:
        return SandboxResult(False, "error", "", f"the sandbox could not start a process: {e}",
                             seconds=time.monotonic() - started, isolation=isolation)
    out, err, killed_for = bytearray(), bytearray(), None
    deadline = time.monotonic() + timeout_s
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            while sel.get_map() and killed_for is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    killed_for = "timeout"
                    break
                for key, _ in sel.select(timeout=left):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    buf = key.data                     # keep at most cap + 1 bytes of each stream
                    buf += chunk[:cap + 1 - len(buf)] if len(buf) <= cap else b""
                    if len(out) > cap:
                        killed_for = "output"
        if killed_for is None:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed_for = "timeout"
    finally:                                           # also when the parent itself is interrupted
        if killed_for is not None or proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    seconds = time.monotonic() - started
    rc = proc.returncode
    stdout = bytes(out[:cap]).decode("utf-8", errors="replace")
    stderr = bytes(err[:cap]).decode("utf-8", errors="replace").strip()
    if killed_for == "output":
        reason, error = "output", (f"output limit: the program printed more than {cap} bytes; "
                                   f"it was stopped and its output cut at {cap} bytes")
    elif killed_for == "timeout":
        reason, error = "timeout", f"wall-time limit: the program ran longer than {timeout_s:g} s and was stopped"
    elif rc == -getattr(signal, "SIGXCPU", 24):
        reason, error = "timeout", f"CPU-time limit: the program used more than {cpu_s} s of CPU and was stopped"
    elif rc == 0:
        reason, error = "ok", ""
    elif rc == _EXIT_MEMORY:
        reason, error = "memory", f"memory limit: the program tried to use more than {memory_mb} MB: {stderr}"
    elif rc == _EXIT_REFUSED:
        reason, error = "refused", f"refused while running: {stderr}"
    elif rc == _EXIT_ERROR:
        reason, error = "error", stderr
    elif rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        reason, error = "error", f"the program was killed by signal {name}" + (f": {stderr}" if stderr else "")
    else:
        reason, error = "error", f"the sandbox failed (exit status {rc}): {stderr[-2000:]}"
    return SandboxResult(reason == "ok", reason, stdout, error, stderr, rc, seconds, (), isolation)


# ---------------------------------------------------------------- layers 2 and 3: inside the child

def _module_copy(name: str, allowed: frozenset[str]):
    """A stand-in for module `name`: its public attributes, without modules or by-name helpers."""
    import types
    real = sys.modules[name]
    hidden = _BY_NAME.get(name, set())
    copy = types.ModuleType(name, getattr(real, "__doc__", None))
    for key, value in vars(real).items():
        if key.startswith("_") or key in hidden:
            continue
        if isinstance(value, types.ModuleType):
            if f"{name}.{key}" in allowed and value.__name__ == f"{name}.{key}":
                setattr(copy, key, _module_copy(value.__name__, allowed))
            continue
        setattr(copy, key, value)

    def missing(attr):
        raise AttributeError(f"module '{name}' has no attribute '{attr}' in the sandbox")
    copy.__getattr__ = missing
    return copy


# Modules the C parts of allowed modules import by themselves (datetime.strptime, strftime);
# the program cannot name them (the AST check and the allow list refuse them).
_INTERNAL_IMPORTS = frozenset({"_strptime", "time"})


def _make_importer(allowed: frozenset[str], violations: list[str]):
    copies: dict[str, object] = {}

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if name in _INTERNAL_IMPORTS and type(fromlist) is list and not fromlist and name in sys.modules:
            return sys.modules[name]                   # the C call's signature: fromlist == []
        why = "relative imports are not allowed" if level else _import_problem(name, allowed)
        if why or name not in sys.modules:
            message = f"import of '{name}' is refused: {why or 'it is not available'}"
            violations.append(message)
            raise ImportError(message)
        top = name if fromlist else name.partition(".")[0]
        if top not in copies:
            copies[top] = _module_copy(top, allowed)
        return copies[top]
    return guarded_import


_IMPORT_DENY = frozenset({
    "ctypes", "_ctypes", "socket", "_socket", "ssl", "_ssl", "subprocess", "_posixsubprocess", "multiprocessing",
    "_multiprocessing", "pty", "fcntl", "mmap", "select", "selectors", "asyncio", "threading", "_thread", "signal",
    "gc", "inspect", "pdb", "code", "codeop", "importlib", "pickle", "_pickle", "marshal", "shutil", "tempfile",
    "pathlib", "io", "_io", "os", "posix", "sys", "builtins", "urllib", "http", "ftplib", "smtplib", "telnetlib",
    "xmlrpc", "webbrowser", "sqlite3", "_sqlite3", "resource", "faulthandler", "tracemalloc", "atexit", "runpy",
    "zipimport", "sysconfig", "typing",
})


def _make_audit_hook(phase: list[int], violations: list[str], read_dir: str):
    """PEP 578 hook: silent while phase[0] == 0 (setup); then refuses every event not known to be harmless."""
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def hook(event, args):
        if phase[0] == 0 or event in ("exec", "compile", "builtins.id"):
            return
        if event == "object.__getattr__" and phase[0] == 2:      # the runner formats a traceback
            return
        if event == "object.__getattr__":
            refused(PermissionError, f"reading '.{args[1]}' is refused: frames and code objects are not available")
        if event == "sys._getframe":          # namedtuple and Enum ask; they handle ValueError
            raise ValueError("frames are not available in the sandbox")
        if event == "import":
            if str(args[0]).partition(".")[0] not in _IMPORT_DENY:
                return
            refused(ImportError, f"import of '{args[0]}' is refused at run time")
        if event == "open":
            path, mode, flags = args
            readonly = (mode is None or not set(str(mode)) & set("wax+")) and not (flags or 0) & write_flags
            if isinstance(path, str | bytes) and readonly:
                real = os.path.realpath(os.fsdecode(path))
                if real.startswith(read_dir + os.sep):
                    return
            message = f"opening {path!r} (mode {mode!r}) is refused: the program may not touch files"
        else:
            message = f"'{event}' is refused: the program may not use the system"
        refused(PermissionError, message)

    def refused(error: type[Exception], message: str):
        if phase[0] == 1 and len(violations) < 20:
            violations.append(message)
        raise error(message)
    return hook


def _child_main(config_json: str) -> None:
    """The runner: set up layers 2-4 around the program, run it, and report through the exit status."""
    import builtins
    import resource
    import traceback
    config = json.loads(config_json)
    allowed = frozenset(config["allowed"])
    with open(config["program"], encoding="utf-8") as f:
        source = f.read()
    for name in [*sorted(allowed), *_INTERNAL_IMPORTS, "encodings.ascii", "encodings.latin_1", "encodings.utf_16"]:
        try:                                    # before the user switch: nobody may not read the stdlib
            __import__(name)
        except ImportError:
            pass
    try:
        code = compile(source, "<program>", "exec")
    except (SyntaxError, ValueError) as e:
        sys.stderr.write(f"{type(e).__name__}: {e}")
        os._exit(_EXIT_ERROR)
    source_lines = source.splitlines()

    try:
        limits = [(resource.RLIMIT_AS, config["memory_bytes"]), (resource.RLIMIT_CPU, config["cpu_s"]),
                  (resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_NOFILE, 32), (resource.RLIMIT_CORE, 0),
                  (resource.RLIMIT_NPROC, 0)]
        for which, soft in limits:
            hard = soft + 1 if which == resource.RLIMIT_CPU else soft
            ceiling = resource.getrlimit(which)[1]     # never ask for more than is already allowed
            if ceiling != resource.RLIM_INFINITY:
                soft, hard = min(soft, ceiling), min(hard, ceiling)
            resource.setrlimit(which, (soft, hard))
        if config["user"] is not None:
            uid, gid = config["user"]
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            if os.getuid() != uid or os.geteuid() != uid:
                raise OSError("could not switch to the unprivileged user")
    except (OSError, ValueError) as e:
        sys.stderr.write(f"sandbox setup failed: {e}")
        os._exit(_EXIT_SETUP)

    violations: list[str] = []
    safe_builtins = {k: v for k, v in vars(builtins).items()
                     if k not in _DENIED_NAMES and k not in ("__import__", "__loader__", "__spec__", "__package__")}
    safe_builtins["__import__"] = _make_importer(allowed, violations)
    namespace = {"__name__": "__main__", "__builtins__": safe_builtins}
    sys.stdout.reconfigure(encoding="utf-8", errors="backslashreplace")
    phase = [0]
    sys.addaudithook(_make_audit_hook(phase, violations, os.path.realpath(os.path.dirname(os.__file__))))

    status, message = 0, ""
    phase[0] = 1
    try:
        exec(code, namespace)
    except SystemExit as e:
        if e.code not in (None, 0):
            status, message = _EXIT_ERROR, f"the program exited with status {e.code!r}"
    except BaseException as e:  # noqa: BLE001 - everything the program raises is reported
        status = _EXIT_MEMORY if isinstance(e, MemoryError) else _EXIT_ERROR
        try:
            message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        except BaseException:  # noqa: BLE001 - a broken __str__
            message = type(e).__name__
        phase[0] = 2                             # frames may be read now; no program code runs
        try:
            lines = [n for fr, n in traceback.walk_tb(e.__traceback__) if fr.f_code.co_filename == "<program>"]
            if lines and 0 < lines[-1] <= len(source_lines):
                message += f" (line {lines[-1]}: {source_lines[lines[-1] - 1].strip()})"
        except BaseException:  # noqa: BLE001 - no line number then
            pass
        phase[0] = 1
    if violations:
        status, message = _EXIT_REFUSED, "; ".join(dict.fromkeys(violations))
    try:
        sys.stdout.flush()
        sys.stderr.write(message)
        sys.stderr.flush()
    finally:
        os._exit(status)                         # no atexit, no finalizers of the program's objects


if __name__ == "__main__":
    _child_main(sys.argv[1])
