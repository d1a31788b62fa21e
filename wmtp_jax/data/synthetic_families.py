"""Templates of the synthetic verifiable code task: Python function-writing problems.

A template draws parameters from an RNG and gives: a function name and signature, an instruction,
correct bodies in different styles, incorrect bodies from plausible mutations (tagged
off_by_one / wrong_operator / wrong_branch / missing_edge_case), and test inputs chosen so that
the mutants are caught. Bodies are `str.format` templates over the parameters (4-space indent).
Expected outputs come from running the first correct style; every label is then verified by
execution (synthetic.py).
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Template:
    family: str
    name: str
    args: str
    difficulty: int
    params: Callable[[random.Random], dict]
    doc: str  # "... that {doc}." (formatted with params)
    correct: tuple[str, ...]
    incorrect: tuple[tuple[str, str], ...]  # (mutation kind, body)
    inputs: Callable[[random.Random, dict], list[tuple]]


OBO, OP, BR, EDGE = "off_by_one", "wrong_operator", "wrong_branch", "missing_edge_case"


_PRIMES = tuple(p for p in range(97, 400) if all(p % q for q in range(2, int(p**0.5) + 1)))


def _ints(rng, n, lo=-20, hi=40):
    return [rng.randint(lo, hi) for _ in range(n)]


def _word(rng, alphabet, lo=0, hi=7):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _lists(rng, n, lo=-9, hi=20):
    return [[rng.randint(lo, hi) for _ in range(rng.randint(1, 6))] for _ in range(n)]


TEMPLATES: tuple[Template, ...] = (
    # ---------------- arithmetic ----------------
    Template(
        "arithmetic",
        "add_const",
        "x",
        1,
        lambda r: {"k": r.randint(2, 99)},
        "returns x plus {k}",
        ("return x + {k}", "return {k} + x", "result = x\n    result += {k}\n    return result"),
        ((OP, "return x - {k}"), (OBO, "return x + {k} + 1"), (OP, "return x * {k}")),
        lambda r, p: [(0,), (1,), (-3,)] + [(v,) for v in _ints(r, 2)],
    ),
    Template(
        "arithmetic",
        "affine",
        "x",
        1,
        lambda r: {"a": r.randint(2, 9), "b": r.randint(1, 30)},
        "returns {a} times x plus {b}",
        ("return {a} * x + {b}", "return x * {a} + {b}", "y = {a} * x\n    return y + {b}"),
        (
            (OP, "return {a} * (x + {b})"),
            (OP, "return {a} * x - {b}"),
            (OBO, "return {a} * x + {b} + 1"),
            (OP, "return {a} + x + {b}"),
        ),
        lambda r, p: [(0,), (1,), (-2,)] + [(v,) for v in _ints(r, 2)],
    ),
    Template(
        "arithmetic",
        "remainder",
        "x",
        1,
        lambda r: {"k": r.randint(2, 99)},
        "returns the remainder of the non-negative integer x divided by {k}",
        ("return x % {k}", "return x - (x // {k}) * {k}"),
        ((OP, "return x // {k}"), (OBO, "return x % {k1}"), (OBO, "return (x + 1) % {k}")),
        lambda r, p: [(0,), (p["k"],), (p["k"] + 1,), (3 * p["k"] - 1,), (r.randint(50, 500),)],
    ),
    Template(
        "arithmetic",
        "sum_squares_plus",
        "a, b",
        2,
        lambda r: {"k": r.randint(1, 99)},
        "returns a squared plus b squared plus {k}",
        (
            "return a * a + b * b + {k}",
            "return a ** 2 + b ** 2 + {k}",
            "total = {k}\n    for v in (a, b):\n        total += v * v\n    return total",
        ),
        (
            (OP, "return a * a + b + {k}"),
            (OP, "return (a + b) ** 2 + {k}"),
            (OP, "return a * a - b * b + {k}"),
            (OBO, "return a * a + b * b + {k1}"),
        ),
        lambda r, p: [(0, 0), (1, 2), (3, -1)] + [tuple(_ints(r, 2, -9, 9))],
    ),
    Template(
        "arithmetic",
        "scaled_difference",
        "a, b",
        1,
        lambda r: {"k": r.randint(2, 60)},
        "returns {k} times the difference a minus b",
        ("return {k} * (a - b)", "return {k} * a - {k} * b", "d = a - b\n    return d * {k}"),
        ((OP, "return {k} * (b - a)"), (OP, "return {k} * a - b"), (OBO, "return {k1} * (a - b)")),
        lambda r, p: [(5, 2), (2, 5), (0, 0), (1, -1)] + [tuple(_ints(r, 2))],
    ),
    # ---------------- strings ----------------
    Template(
        "strings",
        "count_char",
        "s",
        1,
        lambda r: {"c": r.choice(string.ascii_lowercase)},
        "returns how many times the character '{c}' occurs in the string s",
        (
            "return s.count('{c}')",
            "n = 0\n    for ch in s:\n        if ch == '{c}':\n            n += 1\n    return n",
            "return sum(1 for ch in s if ch == '{c}')",
        ),
        (
            (OBO, "return s.count('{c}') + 1"),
            (EDGE, "return s[1:].count('{c}')"),
            (OP, "return len(s)"),
            (OP, "return s.find('{c}')"),
        ),
        lambda r, p: (
            [("",), (p["c"] + "x" + p["c"],), ("zz",)]
            + [(_word(r, "xyz" + p["c"], 2, 8),) for _ in range(2)]
        ),
    ),
    Template(
        "strings",
        "join_repeat",
        "s",
        2,
        lambda r: {"k": r.randint(2, 9), "sep": r.choice("-_,;:|+.")},
        "returns s repeated {k} times, joined with '{sep}'",
        (
            "return '{sep}'.join([s] * {k})",
            "parts = []\n    for _ in range({k}):\n        parts.append(s)\n"
            "    return '{sep}'.join(parts)",
        ),
        (
            (OBO, "return '{sep}'.join([s] * {km1})"),
            (EDGE, "return s * {k}"),
            (OBO, "return '{sep}'.join([s] * {k}) + '{sep}'"),
        ),
        lambda r, p: [("ab",), ("x",), (_word(r, "abcde", 1, 4),)],
    ),
    Template(
        "strings",
        "wrap",
        "s",
        1,
        lambda r: dict(
            zip(
                "lr",
                r.choice(
                    [
                        "()",
                        "[]",
                        "<>",
                        "**",
                        "__",
                        "--",
                        "##",
                        "||",
                        "::",
                        "!?",
                        "@@",
                        "~~",
                        "==",
                        "^^",
                        "$$",
                        "%%",
                        "&&",
                        ";;",
                        "++",
                        "//",
                    ]
                ),
            )
        ),
        "returns s with '{l}' added in front and '{r}' added at the end",
        ("return '{l}' + s + '{r}'", "return f'{l}{{s}}{r}'", "return ''.join(['{l}', s, '{r}'])"),
        ((BR, "return '{r}' + s + '{l}'"), (EDGE, "return '{l}' + s"), (EDGE, "return s + '{r}'")),
        lambda r, p: [("",), ("a",), (_word(r, "abcxyz", 2, 6),)],
    ),
    Template(
        "strings",
        "last_chars",
        "s",
        2,
        lambda r: {"k": r.randint(2, 12)},
        "returns the last {k} characters of s (all of s when it is shorter)",
        ("return s[-{k}:]", "if len(s) <= {k}:\n        return s\n    return s[len(s) - {k}:]"),
        (
            (OBO, "return s[-{km1}:]"),
            (BR, "return s[:{k}]"),
            (EDGE, "return s[len(s) - {k}:]"),
            (OBO, "return s[-{k1}:]"),
        ),
        lambda r, p: [
            ("",),
            ("a",),
            ("abcdefghijklmn"[: p["k"] - 1],),
            ("abcdefghijklmn",),
            (_word(r, "pqrstuvw", 9, 14),),
        ],
    ),
    Template(
        "strings",
        "replace_char",
        "s",
        1,
        lambda r: dict(zip("ab", r.sample(string.ascii_lowercase, 2))),
        "returns s with every '{a}' replaced by '{b}'",
        (
            "return s.replace('{a}', '{b}')",
            "return ''.join('{b}' if ch == '{a}' else ch for ch in s)",
        ),
        (
            (BR, "return s.replace('{b}', '{a}')"),
            (EDGE, "return s.replace('{a}', '{b}', 1)"),
            (OP, "return s.replace('{a}', '')"),
        ),
        lambda r, p: [("",), (p["a"] * 2 + "x" + p["b"],), (_word(r, "xy" + p["a"], 3, 8),)],
    ),
    # ---------------- lists ----------------
    Template(
        "lists",
        "sum_above",
        "xs",
        2,
        lambda r: {"k": r.randint(-9, 25)},
        "returns the sum of the elements of the list xs that are greater than {k}",
        (
            "return sum(x for x in xs if x > {k})",
            "total = 0\n    for x in xs:\n        if x > {k}:\n            total += x\n"
            "    return total",
        ),
        (
            (OBO, "return sum(x for x in xs if x >= {k})"),
            (OP, "return sum(x for x in xs if x < {k})"),
            (EDGE, "return sum(xs)"),
        ),
        lambda r, p: [([],), ([p["k"], p["k"] + 1, p["k"] - 1],)] + [(xs,) for xs in _lists(r, 2)],
    ),
    Template(
        "lists",
        "count_multiples",
        "xs",
        2,
        lambda r: {"k": r.randint(2, 19)},
        "returns how many elements of the list xs are divisible by {k}",
        (
            "return sum(1 for x in xs if x % {k} == 0)",
            "n = 0\n    for x in xs:\n        if x % {k} == 0:\n            n += 1\n    return n",
            "return len([x for x in xs if x % {k} == 0])",
        ),
        (
            (OP, "return sum(1 for x in xs if x % {k} == 1)"),
            (OBO, "return sum(1 for x in xs if x % {k1} == 0)"),
            (EDGE, "return sum(1 for x in xs[1:] if x % {k} == 0)"),
        ),
        lambda r, p: (
            [([],), ([p["k"], 1, 2 * p["k"], p["k"] + 1],), ([0, p["k"] + 1],)]
            + [(xs,) for xs in _lists(r, 2)]
        ),
    ),
    Template(
        "lists",
        "scale_list",
        "xs",
        1,
        lambda r: {"k": r.randint(2, 40)},
        "returns a new list with every element of the list xs multiplied by {k}",
        (
            "return [x * {k} for x in xs]",
            "out = []\n    for x in xs:\n        out.append({k} * x)\n    return out",
            "return list(map(lambda x: x * {k}, xs))",
        ),
        (
            (OP, "return [x + {k} for x in xs]"),
            (OBO, "return [x * {k1} for x in xs]"),
            (EDGE, "return [x * {k} for x in xs[1:]]"),
        ),
        lambda r, p: [([],), ([1, 2, 3],)] + [(xs,) for xs in _lists(r, 2)],
    ),
    Template(
        "lists",
        "max_or_default",
        "xs",
        2,
        lambda r: {"d": r.randint(-30, 30)},
        "returns the largest element of the list xs, or {d} when xs is empty",
        (
            "return max(xs) if xs else {d}",
            "return max(xs, default={d})",
            "if not xs:\n        return {d}\n    best = xs[0]\n    for x in xs[1:]:\n"
            "        if x > best:\n            best = x\n    return best",
        ),
        (
            (OP, "return min(xs) if xs else {d}"),
            (EDGE, "return max(xs)"),
            (BR, "return xs[-1] if xs else {d}"),
            (OBO, "return max(xs) if xs else {d1}"),
        ),
        lambda r, p: [([],), ([3, 9, 2],), ([-5],)] + [(xs,) for xs in _lists(r, 2)],
    ),
    Template(
        "lists",
        "every_kth",
        "xs",
        2,
        lambda r: {"k": r.randint(2, 9)},
        "returns every {k}-th element of the list xs, starting with the first one",
        ("return xs[::{k}]", "return [x for i, x in enumerate(xs) if i % {k} == 0]"),
        ((OBO, "return xs[1::{k}]"), (OBO, "return xs[::{k1}]"), (BR, "return xs[:{k}]")),
        lambda r, p: [([],), (list(range(1, 12)),), ([7],)] + [(xs,) for xs in _lists(r, 1)],
    ),
    # ---------------- conditionals ----------------
    Template(
        "conditionals",
        "clamp",
        "x",
        2,
        lambda r: {"lo": r.randint(-10, 0), "hi": r.randint(1, 25)},
        "returns x clamped to the range [{lo}, {hi}]",
        (
            "return max({lo}, min({hi}, x))",
            "if x < {lo}:\n        return {lo}\n    if x > {hi}:\n        return {hi}\n"
            "    return x",
        ),
        (
            (BR, "return min({lo}, max({hi}, x))"),
            (EDGE, "return min({hi}, x)"),
            (
                BR,
                "if x < {lo}:\n        return {hi}\n    if x > {hi}:\n        return {lo}\n"
                "    return x",
            ),
        ),
        lambda r, p: [
            (p["lo"] - 5,),
            (p["hi"] + 5,),
            (p["lo"],),
            (p["hi"],),
            (r.randint(p["lo"], p["hi"]),),
        ],
    ),
    Template(
        "conditionals",
        "grade",
        "score",
        2,
        lambda r: {"t1": r.randint(70, 95), "t2": r.randint(40, 65)},
        "returns 'A' if score >= {t1}, 'B' if score >= {t2}, and 'C' otherwise",
        (
            "if score >= {t1}:\n        return 'A'\n    elif score >= {t2}:\n        return 'B'\n"
            "    return 'C'",
            "return 'A' if score >= {t1} else ('B' if score >= {t2} else 'C')",
        ),
        (
            (
                OBO,
                "if score > {t1}:\n        return 'A'\n    elif score >= {t2}:\n"
                "        return 'B'\n"
                "    return 'C'",
            ),
            (
                BR,
                "if score >= {t2}:\n        return 'B'\n    elif score >= {t1}:\n"
                "        return 'A'\n"
                "    return 'C'",
            ),
            (EDGE, "return 'A' if score >= {t1} else 'C'"),
        ),
        lambda r, p: [(p["t1"],), (p["t2"],), (p["t2"] - 1,), (100,), (0,)],
    ),
    Template(
        "conditionals",
        "sign_word",
        "x",
        2,
        lambda r: dict(
            zip(
                ("pos", "neg", "zero"),
                r.sample(
                    [
                        "up",
                        "down",
                        "flat",
                        "plus",
                        "minus",
                        "none",
                        "high",
                        "low",
                        "even",
                        "yes",
                        "no",
                        "hot",
                        "cold",
                        "mid",
                    ],
                    3,
                ),
            )
        ),
        "returns '{pos}' when x is positive, '{neg}' when x is negative and '{zero}' when x is 0",
        (
            "if x > 0:\n        return '{pos}'\n    if x < 0:\n        return '{neg}'\n"
            "    return '{zero}'",
            "return '{pos}' if x > 0 else ('{neg}' if x < 0 else '{zero}')",
        ),
        (
            (EDGE, "return '{pos}' if x > 0 else '{neg}'"),
            (
                BR,
                "if x < 0:\n        return '{pos}'\n    if x > 0:\n        return '{neg}'\n"
                "    return '{zero}'",
            ),
            (OBO, "return '{pos}' if x >= 0 else '{neg}'"),
        ),
        lambda r, p: [(0,), (5,), (-3,), (r.randint(1, 99),)],
    ),
    Template(
        "conditionals",
        "divisible_by_both",
        "x",
        2,
        lambda r: dict(zip("ab", r.sample(range(2, 16), 2))),
        "returns True if x is divisible by both {a} and {b}, and False otherwise",
        (
            "return x % {a} == 0 and x % {b} == 0",
            "if x % {a} != 0:\n        return False\n    return x % {b} == 0",
        ),
        (
            (OP, "return x % {a} == 0 or x % {b} == 0"),
            (EDGE, "return x % {a} == 0"),
            (EDGE, "return x % {b} == 0"),
        ),
        lambda r, p: [(0,), (p["a"],), (p["b"],), (p["a"] * p["b"],), (p["a"] * p["b"] + 1,)],
    ),
    # ---------------- loops ----------------
    Template(
        "loops",
        "sum_range",
        "n",
        3,
        lambda r: {"s": r.randint(0, 30)},
        "returns the sum of the integers from {s} to n inclusive (0 when n < {s})",
        (
            "return sum(range({s}, n + 1))",
            "total = 0\n    i = {s}\n    while i <= n:\n        total += i\n        i += 1\n"
            "    return total",
            "total = 0\n    for i in range({s}, n + 1):\n        total += i\n    return total",
        ),
        (
            (OBO, "return sum(range({s}, n))"),
            (OBO, "return sum(range({s1}, n + 1))"),
            (EDGE, "return sum(range({s}, n + 1)) if n > {s} else {s}"),
        ),
        lambda r, p: [(p["s"] - 3,), (p["s"] - 1,), (p["s"],), (p["s"] + 4,), (r.randint(10, 30),)],
    ),
    Template(
        "loops",
        "factorial_mod",
        "n",
        3,
        lambda r: {"m": r.choice(_PRIMES)},
        "returns n factorial modulo {m} for a non-negative integer n",
        (
            "result = 1\n    for i in range(2, n + 1):\n        result = result * i % {m}\n"
            "    return result % {m}",
            "result = 1\n    while n > 1:\n        result *= n\n        n -= 1\n"
            "    return result % {m}",
        ),
        (
            (
                OBO,
                "result = 1\n    for i in range(2, n):\n        result = result * i % {m}\n"
                "    return result",
            ),
            (
                OP,
                "result = 1\n    for i in range(2, n + 1):\n        result = result + i\n"
                "    return result % {m}",
            ),
            (
                EDGE,
                "result = 0\n    for i in range(1, n + 1):\n"
                "        result = (result or 1) * i % {m}\n    return result",
            ),
        ),
        lambda r, p: [(0,), (1,), (5,), (r.randint(6, 30),)],
    ),
    Template(
        "loops",
        "count_digits",
        "n",
        3,
        lambda r: {"b": r.randint(2, 16)},
        "returns the number of digits of the non-negative integer n written in base {b}",
        (
            "if n == 0:\n        return 1\n    count = 0\n    while n > 0:\n        n //= {b}\n"
            "        count += 1\n    return count",
            "count = 1\n    while n >= {b}:\n        n //= {b}\n        count += 1\n"
            "    return count",
        ),
        (
            (
                EDGE,
                "count = 0\n    while n > 0:\n        n //= {b}\n        count += 1\n"
                "    return count",
            ),
            (
                OBO,
                "count = 1\n    while n > {b}:\n        n //= {b}\n        count += 1\n"
                "    return count",
            ),
            (
                OBO,
                "count = 1\n    while n >= {b1}:\n        n //= {b1}\n        count += 1\n"
                "    return count",
            ),
        ),
        lambda r, p: [(0,), (p["b"],), (p["b"] ** 3 - 1,), (r.randint(100, 5000),)],
    ),
    Template(
        "loops",
        "pair_sequence",
        "n",
        3,
        lambda r: {"a": r.randint(0, 9), "c": r.randint(1, 9)},
        "returns term n (counting from 0) of the sequence that starts {a}, {c} and where every "
        "later term is the sum of the two before it",
        (
            "x, y = {a}, {c}\n    for _ in range(n):\n        x, y = y, x + y\n    return x",
            "terms = [{a}, {c}]\n    while len(terms) <= n:\n"
            "        terms.append(terms[-1] + terms[-2])\n"
            "    return terms[n]",
        ),
        (
            (
                OBO,
                "x, y = {a}, {c}\n    for _ in range(n - 1):\n        x, y = y, x + y\n"
                "    return x",
            ),
            (OBO, "x, y = {a}, {c}\n    for _ in range(n):\n        x, y = y, x + y\n    return y"),
            (OP, "x, y = {a}, {c}\n    for _ in range(n):\n        x, y = y, x * y\n    return x"),
        ),
        lambda r, p: [(0,), (1,), (2,), (r.randint(5, 12),)],
    ),
    Template(
        "loops",
        "digit_sum_times",
        "n",
        3,
        lambda r: {"k": r.randint(2, 30)},
        "returns {k} times the sum of the decimal digits of the non-negative integer n",
        (
            "return {k} * sum(int(d) for d in str(n))",
            "total = 0\n    while n > 0:\n        total += n % 10\n        n //= 10\n"
            "    return {k} * total",
        ),
        (
            (OP, "return {k} * len(str(n))"),
            (OBO, "return {k1} * sum(int(d) for d in str(n))"),
            (EDGE, "return {k} * sum(int(d) for d in str(n)[1:])"),
        ),
        lambda r, p: [(0,), (7,), (905,), (r.randint(1000, 99999),)],
    ),
)


def derived(p: dict) -> dict:
    """Adds k1 = k+1, km1 = k-1 (and the same for every int parameter) for the mutants."""
    out = dict(p)
    for key, v in p.items():
        if isinstance(v, int):
            out[f"{key}1"], out[f"{key}m1"] = v + 1, v - 1
    return out


def function_code(t: Template, body: str, p: dict) -> str:
    return f"def {t.name}({t.args}):\n    " + body.format(**derived(p))
