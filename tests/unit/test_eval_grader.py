"""Grader integrity: the verdict is taken by trusted code that the program cannot reach.

The red-team attacks that passed the old marker-based grader with a wrong solution are tests
here: each must fail, on HumanEval, MBPP and synthetic alike."""

import math
import os
import time

import pytest

from wmtp_jax.eval import benchmarks, grader, session, wire

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "eval")

# Top-level code only (no top-level def/class/if/print: HumanEval's truncation would cut them).
ATTACKS = {
    "print the pass marker": (
        "import os, re, sys\n"
        "_text = open(__file__).read()\n"
        "_f = sys._getframe()\n"
        "while _f is not None:\n"
        "    _text += repr(_f.f_code.co_consts)\n"
        "    _f = _f.f_back\n"
        "for _m in set(re.findall(r'WMTP_DONE_[0-9a-f]+', _text)) | {'WMTP_DONE_0', 'passed'}:\n"
        "    for _fd in range(0, 10):\n"
        "        try:\n"
        "            os.write(_fd, ('\\n' + _m + '\\n').encode())\n"
        "        except OSError:\n"
        "            pass\n"
        "os._exit(0)\n"
    ),
    "re-exec with -O": (
        "import os, sys\n"
        "sys.flags.optimize or os.execv(sys.executable,\n"
        "                               [sys.executable, '-O', *sys.orig_argv[1:]])\n"
    ),
    "tracer skipping the check": (
        "import sys, linecache, threading\n"
        "_line = lambda fr: linecache.getline(fr.f_code.co_filename, fr.f_lineno)\n"
        "_skip = lambda fr: setattr(fr, 'f_lineno', fr.f_lineno + 1)\n"
        "_t = lambda fr, ev, arg: ((ev == 'line' and any(s in _line(fr) for s in "
        "('check(', 'assert', 'candidate')) and _skip(fr)), _t)[1]\n"
        "sys.settrace(_t)\n"
        "threading.settrace(_t)\n"
        "_f = sys._getframe()\n"
        "while _f is not None:\n"
        "    _f.f_trace = _t\n"
        "    _f = _f.f_back\n"
    ),
    "tamper with the server's replies": (
        "import sys\n"
        "_server = sys.modules['__main__'].__dict__\n"
        "_server['encode'] = lambda value, refs=None: {'tuple': []} if value is None else True\n"
    ),
}
# Wrong results dressed up to compare equal to anything.
LIARS = {
    "object whose __eq__ is always true": (
        "class Yes:\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\nreturn Yes()"
    ),
    "int subclass whose __eq__ is always true": (
        "class Yes(int):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\nreturn Yes(0)"
    ),
    "str subclass whose __eq__ is always true": (
        "class Yes(str):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = str.__hash__\nreturn Yes('')"
    ),
}


def _indent(body: str) -> str:
    return "".join("    " + line for line in body.splitlines(True))


def _problems():
    return {
        "humaneval": benchmarks.load_problems("humaneval", "/nonexistent")["HumanEval/53"],
        "mbpp": benchmarks.load_problems("mbpp", FIXTURES)["11"],
        "synthetic": benchmarks.load_problems("synthetic", FIXTURES)["synthetic/0"],
    }


def _completion(benchmark: str, body: str, top: str = "") -> str:
    """A completion whose function has ``body``, followed by top-level code ``top``."""
    head = {"humaneval": "", "mbpp": "def add(x, y):\n", "synthetic": "def double(x):\n"}
    return head[benchmark] + _indent(body) + "\n" + top


PROBLEMS = _problems()
RIGHT = {"humaneval": "return x + y", "mbpp": "return x + y", "synthetic": "return 2 * x"}
WRONG = {"humaneval": "return x - y", "mbpp": "return x - y", "synthetic": "return x"}


@pytest.mark.parametrize("benchmark", list(PROBLEMS))
def test_right_passes_wrong_fails(benchmark):
    p = PROBLEMS[benchmark]
    assert benchmarks.check_completion(benchmark, p, _completion(benchmark, RIGHT[benchmark])) == {
        "passed": True,
        "result": "passed",
    }
    assert benchmarks.check_completion(benchmark, p, _completion(benchmark, WRONG[benchmark])) == {
        "passed": False,
        "result": "failed: AssertionError",
    }


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("benchmark", list(PROBLEMS))
def test_attacks_with_a_wrong_solution_fail(benchmark, attack):
    completion = _completion(benchmark, WRONG[benchmark], ATTACKS[attack])
    if benchmark == "humaneval":  # the attack survives HumanEval's truncation
        assert benchmarks.postprocess(benchmark, completion) == completion
    res = benchmarks.check_completion(benchmark, PROBLEMS[benchmark], completion)
    assert not res["passed"], res


@pytest.mark.parametrize("liar", list(LIARS))
@pytest.mark.parametrize("benchmark", list(PROBLEMS))
def test_values_that_lie_about_equality_fail(benchmark, liar):
    res = benchmarks.check_completion(
        benchmark, PROBLEMS[benchmark], _completion(benchmark, LIARS[liar])
    )
    assert not res["passed"], res


def test_a_tracer_does_not_reach_the_verdict():
    """With a right solution the tracer changes nothing: only the returned values count."""
    res = benchmarks.check_completion(
        "humaneval",
        PROBLEMS["humaneval"],
        _completion("humaneval", RIGHT["humaneval"], ATTACKS["tracer skipping the check"]),
    )
    assert res == {"passed": True, "result": "passed"}


def test_failures_the_test_code_swallows_still_fail():
    """A dying program raises SessionEnded (a BaseException) even under `except Exception`,
    and a bare `except:` cannot hide it either."""
    program = "import os\ndef f(x):\n    os._exit(0)\n"
    for catch in ("Exception", "BaseException"):
        tests = f"try:\n    f(1)\nexcept {catch}:\n    pass\n"
        assert grader.run_tests(program, tests) == {
            "passed": False,
            "result": "failed: exited before all tests ran",
        }


def test_exceptions_arrive_marked_and_fail_even_when_caught():
    program = (
        "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n"
        "class Odd(Exception):\n    pass\n"
        "def g():\n    raise Odd('odd')\n"
    )
    for catch in ("ValueError", "Exception", "BaseException"):
        tests = f"try:\n    f(-1)\nexcept {catch}:\n    pass\nassert f(2) == 2\n"
        assert grader.run_tests(program, tests) == {
            "passed": False,
            "result": "failed: ValueError: negative",
        }
    assert grader.run_tests(program, "g()\n") == {"passed": False, "result": "failed: Odd: odd"}
    with session.serve(program) as s:
        s.exchange()
        f = grader._Remote(s, "f", {})
        assert f(3) == 3
        with pytest.raises(grader.CandidateRaised, match="negative"):
            f(-1)
        assert s.ended == "failed: ValueError: negative"


# Test shapes where a StopIteration crossing as itself would end the iteration early and pass.
SHAPES = [
    "assert all(map(f, [1, 2]))",
    "assert not any(map(f, [1, 2]))",
    "assert list(map(f, [1, 2])) == []",
    "assert sorted([2, 1], key=f) == [1, 2]",
    "assert [f(x) for x in (1, 2)] == [1, 2]",
    "assert all(f(x) for x in (1, 2))",
    "assert {f(x) for x in (1, 2)} == set()",
    "try:\n    f(1)\nexcept BaseException:\n    pass",
]


@pytest.mark.parametrize(
    "exc", ["StopIteration", "GeneratorExit", "KeyboardInterrupt", "SystemExit"]
)
def test_signal_exceptions_from_the_candidate_fail_every_shape(exc):
    program = f"def f(x):\n    raise {exc}\n"
    for shape in SHAPES:
        assert grader.run_tests(program, shape + "\n", entry_point="f") == {
            "passed": False,
            "result": f"failed: {exc}",
        }, shape
    right = "def f(x):\n    return x\n"  # the shapes themselves are fine
    assert grader.run_tests(right, "assert all(map(f, [1, 2]))\n")["passed"]


def test_missing_function_timeouts_and_output_caps():
    assert grader.run_tests("x = 1\n", "assert f(1) == 1\n") == {
        "passed": False,
        "result": "failed: NameError: name 'f' is not defined",
    }
    assert grader.run_tests("x = 1\n", "assert f(1) == 1\n", entry_point="f") == {
        "passed": False,
        "result": "failed: the program defines no function 'f'",
    }
    assert grader.run_tests("def f():\n    while True:\n        pass\n", "f()\n", timeout=1.0) == {
        "passed": False,
        "result": "timed out",
    }
    assert grader.run_tests("def f():\n    return 'x' * (2 << 20)\n", "f()\n") == {
        "passed": False,
        "result": "failed: output limit exceeded",
    }
    assert grader.run_tests("import sys\nsys.exit(0)\ndef f():\n    return 1\n", "f()\n") == {
        "passed": False,
        "result": "failed: exited before all tests ran",
    }
    assert grader.run_tests("1/0\n", "f()\n") == {
        "passed": False,
        "result": "failed: ZeroDivisionError: division by zero",
    }


def test_setup_objects_pass_by_reference_and_helpers_stay_trusted():
    setup = (
        "class Node:\n    def __init__(self, v, kids=()):\n"
        "        self.v, self.kids = v, kids\n"
        "root = Node(1, (Node(2), Node(3)))\n"
        "def helper(x):\n    return x + 100\n"
    )
    program = setup + (
        "def total(n):\n    return n.v + sum(total(k) for k in n.kids)\n"
        "def helper(x):\n    return 0\n"
    )
    tests = "assert total(root) == 6\nassert helper(1) == 101\n"
    assert grader.run_tests(program, tests, setup=setup) == {"passed": True, "result": "passed"}


def test_mbpp_tests_may_use_stdlib_modules_they_do_not_import():
    program = "import math\ndef area(r):\n    return math.pi * r * r\n"
    assert grader.run_tests(program, "assert math.isclose(area(1), 3.14159, rel_tol=1e-3)\n")[
        "passed"
    ]


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -7,
        2**80,
        1.5,
        float("inf"),
        "text\nwith\x00newline",
        [1, [2, "3"]],
        (1, (2,)),
        {1, 2},
        frozenset({"a"}),
        {1: "a", (2, 3): [4]},
        b"\x00\xff",
        3 + 4j,
        [],
        ((), {}, set()),
    ],
)
def test_wire_round_trip_keeps_types(value):
    back = wire.decode(__import__("json").loads(wire.dumps(wire.encode(value))))
    assert back == value and type(back) is type(value)


def test_wire_nan_and_rejects():
    assert math.isnan(wire.decode(wire.encode(float("nan"))))
    for bad in (
        {"eval": "1"},
        {"tuple": 1},
        {"set": [[1]]},
        {"dict": [[[1], 2]]},
        {"ref": "x"},
        {"tuple": [], "set": []},
        {"complex": ["1", 2]},
    ):
        with pytest.raises(ValueError):
            wire.decode(bad)
    with pytest.raises(TypeError, match="not plain data"):
        wire.encode(object())
    assert wire.encode(True) is True and wire.encode([1.0]) == [1.0]


M61 = (1 << 61) - 1  # the modulus of int hashes: k * M61 all hash to 0


def _nested(depth: int):
    v = 0
    for _ in range(depth):
        v = [v]
    return v


def test_wire_decoding_refuses_equal_hashes_depth_and_the_deadline():
    collide = [k * M61 for k in range(1, 40_001)]
    with pytest.raises(ValueError, match="more than 64 distinct values with one hash"):
        wire.decode({"set": collide})
    with pytest.raises(ValueError, match="one hash"):  # in a list too: tests may set() it
        wire.decode(collide)
    with pytest.raises(ValueError, match="one hash"):  # tuples hash by their items
        wire.decode([{"tuple": [k, 1]} for k in collide[:100]])
    assert wire.decode({"set": collide[:64]}) == set(collide[:64])
    legit = [{"tuple": [a, b, c]} for a in (-1, -2) for b in (-1, -2) for c in (-1, -2)]
    assert len(wire.decode({"set": legit})) == 8  # hash(-1) == hash(-2): a few collide
    assert wire.decode([7] * 10_000) == [7] * 10_000  # equal values are one
    assert wire.decode(_nested(wire.MAX_DEPTH)) == _nested(wire.MAX_DEPTH)
    with pytest.raises(ValueError, match="nested deeper than 100"):
        wire.decode(_nested(wire.MAX_DEPTH + 1))
    with pytest.raises(TimeoutError):
        wire.decode(list(range(10_000)), deadline=time.monotonic() - 1)


def test_hostile_replies_fail_the_sample():
    for body, reason in [
        # a list (a set would be quadratic to build in the sandbox already) that the test code
        # makes a set of
        (f"return [k * {M61} for k in range(1, 40001)]", "more than 64 distinct values"),
        ("v = 0\n    for _ in range(200):\n        v = [v]\n    return v", "nested deeper"),
    ]:
        res = grader.run_tests(f"def uniq(xs):\n    {body}\n", "assert set(uniq([1])) == {1}\n")
        assert not res["passed"] and "malformed reply from the program" in res["result"]
        assert reason in res["result"], res


def test_session_refuses_oversized_and_garbled_replies():
    with session.serve("import sys\nsys.stdout.flush()\n") as s:
        assert s.exchange() == {"ready": []}
        assert s.exchange({"call": "nope", "args": [], "kwargs": []}) == {
            "raised": ["KeyError", "'nope'"]
        }
    garble = (
        "import os\nfor fd in range(3, 8):\n    try:\n        os.write(fd, b'{oops\\n')\n"
        "    except OSError:\n        pass\n"
    )
    with session.serve(garble) as s:
        with pytest.raises(session.SessionEnded, match="malformed reply"):
            s.exchange()


def test_broken_benchmark_code_is_an_error_not_a_failed_sample():
    with pytest.raises(ValueError, match="benchmark's setup or test code does not run"):
        grader.run_tests("def f():\n    return 1\n", "assert f() ==\n")
    with pytest.raises(ValueError, match="NameError"):
        grader.run_tests("def f():\n    return 1\n", "assert f() == 1\n", setup="undefined_name\n")
