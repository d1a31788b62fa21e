"""Raw dataset rows (real on-disk schemas) -> Alpaca records, as the original's setup_datasets.

Every field is checked: a missing field or a wrong type raises DataError naming file:line and the
field. `loc` is the "file:N" location given by readers.iter_rows.
"""

from __future__ import annotations

import re

from wmtp_jax.data.records import DataError, require

# deepmind/code_contests ClassLabel enums (HF integer ids); string names are accepted too.
LANGUAGES = ["UNKNOWN_LANGUAGE", "PYTHON", "CPP", "PYTHON3", "JAVA"]
PYTHON_LANGS = {1, 3}  # PYTHON (py2) and PYTHON3, as the original
DIFFICULTIES = ["UNKNOWN_DIFFICULTY", "EASY", "MEDIUM", "HARD", "HARDER", "HARDEST", "EXTERNAL"] + [
    chr(c) for c in range(ord("A"), ord("V") + 1)
]


def _split_loc(loc: str):
    path, _, n = loc.rpartition(":")
    return (path, int(n)) if n.isdigit() else (loc, None)


def _req(row, field, types, loc, default=...):
    path, n = _split_loc(loc)
    return require(row, field, types, path, n, default)


def _enum(value, names, field, loc) -> int:
    if isinstance(value, str):
        key = value.upper()
        if key.isdigit():
            return int(key)
        if key not in names:
            raise DataError(f"{loc}: field '{field}' has unknown value {value!r} (known: {names})")
        return names.index(key)
    return int(value)


def _tests(row, field, loc) -> dict:
    t = _req(row, field, dict, loc, default={"input": [], "output": []})
    inputs = _req({f"{field}.input": t.get("input")}, f"{field}.input", list, loc, default=[])
    outputs = _req({f"{field}.output": t.get("output")}, f"{field}.output", list, loc, default=[])
    if len(inputs) != len(outputs):
        raise DataError(
            f"{loc}: field '{field}' has {len(inputs)} inputs but {len(outputs)} outputs"
        )
    return {"input": list(inputs), "output": list(outputs)}


def _solutions(row, field, loc) -> list[tuple[int, int, str]]:
    """[(index in the unfiltered list, language id, code)] of a {language[], solution[]} field."""
    s = _req(row, field, dict, loc, default={"language": [], "solution": []})
    langs = _req(
        {f"{field}.language": s.get("language")}, f"{field}.language", list, loc, default=[]
    )
    codes = _req(
        {f"{field}.solution": s.get("solution")}, f"{field}.solution", list, loc, default=[]
    )
    if len(langs) != len(codes):
        raise DataError(
            f"{loc}: field '{field}' has {len(langs)} languages but {len(codes)} solutions"
        )
    out = []
    for i, (lang, code) in enumerate(zip(langs, codes)):
        if not isinstance(code, str):
            raise DataError(
                f"{loc}: field '{field}.solution[{i}]' must be string, got {type(code).__name__}"
            )
        out.append((i, _enum(lang, LANGUAGES, f"{field}.language[{i}]", loc), code))
    return out


def codecontests(row: dict, loc: str) -> tuple[list[dict], dict, dict]:
    """-> (solution records, eval record, tests entry). Python (py2/py3) solutions only; correct
    ones first then incorrect, task_id = f"{name}_{correct|incorrect}_{index in the raw list}"."""
    name = _req(row, "name", str, loc)
    desc = _req(row, "description", str, loc)
    diff = _req(row, "difficulty", (int, str), loc, default=-1)
    diff = -1 if diff == -1 else _enum(diff, DIFFICULTIES, "difficulty", loc)
    public = _tests(row, "public_tests", loc)
    meta = {"source": "code_contests", "difficulty": diff, "has_tests": len(public["input"]) > 0}
    records = []
    for field, label, ok in (
        ("solutions", "correct", True),
        ("incorrect_solutions", "incorrect", False),
    ):
        for i, lang, code in _solutions(row, field, loc):
            if lang in PYTHON_LANGS:
                records.append(
                    {
                        "instruction": desc,
                        "input": "",
                        "output": code,
                        "task_id": f"{name}_{label}_{i}",
                        "is_correct": ok,
                        "metadata": meta,
                    }
                )
    private, generated = _tests(row, "private_tests", loc), _tests(row, "generated_tests", loc)
    source = _req(row, "source", (int, str), loc, default=0)
    eval_rec = {
        "task_id": name,
        "instruction": desc,
        "input": "",
        "metadata": {
            "source": source,
            "difficulty": diff,
            "cf_rating": _req(row, "cf_rating", int, loc, default=None),
            "time_limit": _req(row, "time_limit", dict, loc, default=None),
            "memory_limit_bytes": _req(row, "memory_limit_bytes", int, loc, default=None),
            "public_tests": public,
            "private_tests": private,
            "generated_tests": generated,
        },
    }
    tests = {
        "task_name": name,
        "public_tests": public,
        "private_tests": private,
        "generated_tests": generated,
    }
    return records, eval_rec, tests


_FN = re.compile(r"assert\s+(\w+)\s*\(")


def mbpp(row: dict, loc: str) -> dict:
    """MBPP full (`text`) or sanitized (`prompt`) rows; function name sentence as the original."""
    text_field = "text" if "text" in row else "prompt"
    text = _req(row, text_field, str, loc)
    code = _req(row, "code", str, loc)
    task_id = _req(row, "task_id", int, loc)
    tests = _req(row, "test_list", list, loc)
    for i, t in enumerate(tests):
        if not isinstance(t, str):
            raise DataError(f"{loc}: field 'test_list[{i}]' must be string, got {type(t).__name__}")
    setup = _req(row, "test_setup_code", str, loc, default="")
    instruction = text
    m = _FN.search(tests[0]) if tests else None
    if m:
        instruction += f"\n\nThe function should be named '{m.group(1)}'."
    return {
        "instruction": instruction,
        "input": "",
        "output": code,
        "task_id": str(task_id),
        "metadata": {
            "source": "mbpp",
            "test_list": list(tests),
            "test_setup_code": setup,
            "has_tests": len(tests) > 0,
        },
    }


def humaneval(row: dict, loc: str) -> dict:
    test = _req(row, "test", str, loc)
    return {
        "instruction": _req(row, "prompt", str, loc),
        "input": "",
        "output": _req(row, "canonical_solution", str, loc),
        "task_id": _req(row, "task_id", str, loc),
        "metadata": {
            "source": "humaneval",
            "test": test,
            "entry_point": _req(row, "entry_point", str, loc),
            "has_tests": bool(test.strip()),
        },
    }


def gsm8k_final_answer(answer: str, loc: str) -> str:
    """The number after the last '####', commas removed ("1,200" -> "1200")."""
    if "####" not in answer:
        raise DataError(f"{loc}: field 'answer' has no '#### <number>' final answer")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def gsm8k(row: dict, loc: str, idx: int) -> dict:
    answer = _req(row, "answer", str, loc)
    return {
        "instruction": _req(row, "question", str, loc),
        "input": "",
        "output": answer,
        "task_id": f"gsm8k_{idx}",
        "metadata": {"source": "gsm8k", "final_answer": gsm8k_final_answer(answer, loc)},
    }
