"""Prompt formats: Alpaca unwrap, HumanEval instruction, chat replies made function bodies that
the HumanEval harness runs, stops per format, bad formats refused."""

import pytest

from wmtp_jax.eval import Problem, check_completion
from wmtp_jax.eval.benchmarks import ALPACA_STOP, HUMANEVAL_STOP, alpaca_prompt
from wmtp_jax.eval.prompts import instruction, render, reply_to_body, resolve, stops, to_completion

STUB = 'def add(a, b):\n    """Return a + b."""\n'
HE = Problem(
    "HumanEval/x", STUB, {"test": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"}
)


def test_formats_resolve_and_stop():
    assert resolve("humaneval", "auto") == "plain" and resolve("mbpp", "auto") == "alpaca"
    assert stops("humaneval", "plain") == HUMANEVAL_STOP
    assert stops("humaneval", "alpaca") == ALPACA_STOP
    assert stops("mbpp", "chat") == ()
    with pytest.raises(ValueError, match="prompt_format 'xml'"):
        resolve("mbpp", "xml")


def test_render_plain_alpaca_and_instruction_unwrap():
    mb = Problem("1", alpaca_prompt("Write f."), {})
    assert instruction("mbpp", mb) == "Write f."
    assert render("mbpp", mb, "plain") == "Write f." and render("mbpp", mb, "alpaca") == mb.prompt
    assert render("humaneval", HE, "plain") == STUB
    alpaca = render("humaneval", HE, "alpaca")
    assert STUB in alpaca and "### Response:" in alpaca
    with pytest.raises(ValueError, match="chat template"):
        render("mbpp", mb, "chat", tokenizer=None)


@pytest.mark.parametrize(
    "reply,passes",
    [
        (
            "Sure!\n```python\nimport operator\n\n"
            "def helper(x, y):\n    return operator.add(x, y)\n\n"
            "def add(a, b):\n    # comment\n    return helper(a, b)\n\n"
            "print(add(1, 2))\n```\nDone.",
            True,
        ),
        ("def add(a, b): return a - b", False),  # one-liner, wrong
        ("```python\nreturn a + b\n```", True),  # a bare body
        ("```python\ndef add(a, b:\n```", False),  # syntax error: scored, fails
    ],
)
def test_chat_replies_become_function_bodies(reply, passes):
    body = to_completion("humaneval", HE, "chat", reply)
    assert all(line.startswith("    ") for line in body.splitlines() if line)
    assert check_completion("humaneval", HE, body)["passed"] is passes


def test_reply_to_body_keeps_helpers_nested():
    body = reply_to_body("def add(a, b):\n    return g(a) + b\n\ndef g(x):\n    return x", "add")
    assert body == "    def g(x):\n        return x\n    return g(a) + b\n"
