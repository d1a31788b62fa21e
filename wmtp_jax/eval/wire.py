"""Plain-data wire format between the trusted grader and a sandboxed program, and the program's
call server.

This file runs on both sides: the grader imports it, and each sandbox gets a copy and runs
``python -I -S wire.py CONFIG serve main.py`` (standard library only, no package imports):
``confine`` applies the run's rlimits and drops to its uid, then the server executes ``main.py``
as ``__main__`` and answers calls, one JSON line each way (``run`` instead of ``serve`` only
runs a stdin/stdout program):

    server -> grader  {"ready": [names of the program's callable globals]}
    grader -> server  {"call": name, "args": <list>, "kwargs": <list of [key, value]>}
    server -> grader  {"value": <value>}  or  {"raised": [exception type name, message]}

Values: None, bool, int, float, str and list are themselves; other types are one-key objects:
{"tuple": [...]}, {"set": [...]}, {"frozenset": [...]}, {"dict": [[k, v], ...]},
{"bytes": latin-1 str}, {"complex": [re, im]}; {"ref": name} (grader -> program only) names a
global of the program (an object built by the benchmark's setup code, e.g. a tree). Anything
else cannot be sent. The grader decodes with ``json.loads`` and ``decode``, so whatever bytes a
hostile program writes, the grader only ever sees fresh built-in values.
"""

import _ctypes
import builtins
import json
import os
import resource
import sys
import time

_SEQUENCES = {"tuple": tuple, "set": set, "frozenset": frozenset}


def encode(x, refs=None):
    """Plain value -> JSON-able value (see the module docstring). ``refs``: {id(obj): name} for
    objects that are not plain data but exist on the other side under that name."""
    if x is None or type(x) in (bool, int, float, str):
        return x
    if isinstance(x, bool):
        return bool(x)
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x)
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, list):
        return [encode(v, refs) for v in x]
    for tag, kind in _SEQUENCES.items():
        if isinstance(x, kind):
            return {tag: [encode(v, refs) for v in x]}
    if isinstance(x, dict):
        return {"dict": [[encode(k, refs), encode(v, refs)] for k, v in x.items()]}
    if isinstance(x, (bytes, bytearray)):
        return {"bytes": bytes(x).decode("latin-1")}
    if isinstance(x, complex):
        return {"complex": [x.real, x.imag]}
    if refs and id(x) in refs:
        return {"ref": refs[id(x)]}
    raise TypeError(f"a {type(x).__name__} is not plain data")


MAX_DEPTH = 100  # containers nested deeper are refused
MAX_EQUAL_HASHES = 64  # distinct values sharing one hash: more are refused


def decode(v, names=None, deadline=None):
    """JSON value from ``json.loads`` -> fresh built-in value, in time linear in the size of ``v``.

    ValueError on anything that is not plain data, on containers nested deeper than MAX_DEPTH,
    and on more than MAX_EQUAL_HASHES distinct numbers, tuples or frozensets with one hash (a
    set or dict of them costs quadratic time, here or in the test code); TimeoutError past
    ``deadline`` (``time.monotonic()``). ``names``: the program's globals, for {"ref": name}
    (server side only)."""
    return _Decoder(names, deadline).value(v, 0)


class _Decoder:
    def __init__(self, names, deadline):
        self.names, self.deadline, self.nodes = names, deadline, 0
        self.first, self.groups = {}, {}  # hash -> first value; hash -> distinct values

    def value(self, v, depth):
        self.nodes += 1
        if self.deadline is not None and not self.nodes % 4096:
            if time.monotonic() > self.deadline:
                raise TimeoutError("decoding the reply ran past the deadline")
        t = type(v)
        if v is None or t in (bool, str):
            return v
        if t in (int, float):
            return self.hashed(v)
        if depth >= MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH}")
        if t is list:
            return [self.value(x, depth + 1) for x in v]
        if t is dict and len(v) == 1:
            ((tag, body),) = v.items()
            try:
                if tag in _SEQUENCES and type(body) is list:
                    out = _SEQUENCES[tag](self.value(x, depth + 1) for x in body)
                    return out if tag == "set" else self.hashed(out)
                if (
                    tag == "dict"
                    and type(body) is list
                    and all(type(p) is list and len(p) == 2 for p in body)
                ):
                    return {self.value(k, depth + 1): self.value(x, depth + 1) for k, x in body}
                if tag == "bytes" and type(body) is str:
                    return body.encode("latin-1")
                if (
                    tag == "complex"
                    and type(body) is list
                    and len(body) == 2
                    and all(type(b) in (int, float) for b in body)
                ):
                    return self.hashed(complex(*body))
            except (TypeError, UnicodeEncodeError) as e:  # unhashable set item or dict key, ...
                raise ValueError(f"malformed {tag}: {e}") from None
            if tag == "ref" and self.names is not None and type(body) is str:
                if body in self.names:
                    return self.names[body]
        raise ValueError(f"not plain data: {str(v)[:80]}")

    def hashed(self, x):
        """``x``, counted among the distinct values of its hash (strings are left out: their
        hash is keyed per process, out of the program's reach)."""
        try:
            h = hash(x)
        except TypeError:  # a tuple holding a list: never a set item or dict key
            return x
        first = self.first.setdefault(h, x)
        if first is not x and first != x:
            group = self.groups.setdefault(h, {first})
            group.add(x)
            if len(group) > MAX_EQUAL_HASHES:
                raise ValueError(f"more than {MAX_EQUAL_HASHES} distinct values with one hash")
        return x


def dumps(msg) -> bytes:
    """One message as one line (json escapes every newline inside strings)."""
    return json.dumps(msg).encode() + b"\n"


SETUP_ERROR = 113  # exit status when ``confine`` fails


class _Long(_ctypes._SimpleCData):
    _type_ = "l"


class _Syscall(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _Long


def _syscall(nr: int, *args: int) -> tuple[int, int]:
    """libc's ``syscall(nr, *args)`` -> (result, errno), through ``_ctypes``, the C half of
    ctypes: importing ctypes itself costs ~2 ms of CPU, on every run."""
    call = _Syscall(_ctypes.dlsym(_ctypes.dlopen(None), "syscall"))
    return call(_Long(nr), *map(_Long, args)), _ctypes.get_errno()


def confine(config: dict) -> None:
    """The run's memory cgroup, rlimits, the run's uid (the interpreter may start as root inside
    bwrap), a fresh session keyring of that uid (the one inherited is the scorer's), cwd."""
    try:
        if config["cgroup_fd"] is not None:
            os.write(config["cgroup_fd"], b"0")  # "0": this process
            os.close(config["cgroup_fd"])
        for name, value in config["rlimits"]:
            resource.setrlimit(getattr(resource, name), (value, value))
        if config["uid"] is not None and os.getuid() != config["uid"]:
            os.setgroups([])
            os.setgid(config["uid"])
            os.setuid(config["uid"])
        if config["keyctl"] is not None:  # KEYCTL_JOIN_SESSION_KEYRING (1), name NULL
            result, errno = _syscall(config["keyctl"], 1, 0)
            if result < 0 and errno != 38:  # ENOSYS: a kernel without keyrings
                raise OSError(errno, "cannot join a fresh session keyring")
        os.chdir(config["cwd"])
    except Exception as e:
        os.write(2, f"sandbox setup error: {e!r}\n".encode())
        os._exit(SETUP_ERROR)


def run(path: str) -> dict:
    """Execute the program at ``path`` as __main__; returns its globals."""
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), "main.py", "exec")
    program = {"__name__": "__main__", "__file__": path, "__builtins__": builtins}
    exec(code, program)
    return program


def serve(path: str) -> None:
    """Run the program at ``path`` as __main__, then answer calls on stdin/stdout until EOF.

    The program's own prints go to stderr: stdout carries only messages."""
    rx = os.fdopen(os.dup(0), "rb")
    tx = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    program = run(path)

    def send(msg):
        sys.stdout.flush()
        tx.write(dumps(msg))
        tx.flush()

    send({"ready": sorted(k for k, v in program.items() if callable(v) and not k.startswith("__"))})
    for line in rx:
        try:
            req = json.loads(line)
            fn = program[req["call"]]
            args = decode(req["args"], program)
            kwargs = dict(decode(req["kwargs"], program))
            reply = {"value": encode(fn(*args, **kwargs))}
        except BaseException as e:  # SystemExit, KeyboardInterrupt, GeneratorExit too
            reply = {"raised": [type(e).__name__, str(e)[:1000]]}
        send(reply)


if __name__ == "__main__":
    confine(json.loads(sys.argv[1]))
    builtins.exit = builtins.quit = sys.exit  # what `site` gives; -S skips its slow start-up
    mode, main = sys.argv[2:]
    sys.argv = [main]
    serve(main) if mode == "serve" else run(main)
