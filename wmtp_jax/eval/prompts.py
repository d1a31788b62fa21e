"""How a benchmark problem is put to a model, and how its reply becomes a scored completion.

prompt_format:
  auto    the benchmark's own prompt (HumanEval: the function stub, plain; the others: Alpaca)
  plain   the problem text as is (HumanEval stub / the bare instruction), continued by the model
  alpaca  the Alpaca template around the instruction (HumanEval: "Complete the following
          Python function" + the stub in a fence)
  chat    the instruction as the user message of the tokenizer's chat template (generation
          prompt added); the code is extracted from the reply

A HumanEval reply to an instruction (alpaca / chat) is a whole program; the scorer runs
`prompt + completion`, so the reply is turned into the body of the prompt's function: the
entry point's body, with the reply's other top-level imports / helpers nested in front of it.
"""

from __future__ import annotations

import ast
import textwrap

from wmtp_jax.eval.benchmarks import (
    ALPACA_NO_INPUT,
    ALPACA_STOP,
    HUMANEVAL_STOP,
    Problem,
    alpaca_prompt,
    extract_code,
)

PROMPT_FORMATS = ("auto", "plain", "alpaca", "chat")
HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function "
    "in a ```python block.\n\n```python\n{prompt}```"
)
_ALPACA_HEAD, _ALPACA_TAIL = ALPACA_NO_INPUT.split("{instruction}")


def resolve(benchmark: str, fmt: str) -> str:
    if fmt not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format {fmt!r}; valid: {list(PROMPT_FORMATS)}")
    if fmt != "auto":
        return fmt
    return "plain" if benchmark == "humaneval" else "alpaca"


def instruction(benchmark: str, problem: Problem) -> str:
    """The task as an instruction: HumanEval's stub wrapped in HUMANEVAL_INSTRUCTION, the others'
    instruction unwrapped from their Alpaca prompt."""
    p = problem.prompt
    if benchmark == "humaneval":
        return HUMANEVAL_INSTRUCTION.format(prompt=p)
    if p.startswith(_ALPACA_HEAD) and p.endswith(_ALPACA_TAIL):
        return p[len(_ALPACA_HEAD) : len(p) - len(_ALPACA_TAIL)]
    return p


def render(benchmark: str, problem: Problem, fmt: str, tokenizer=None) -> str:
    """The prompt text for `fmt` (a resolved format); chat needs the tokenizer's template."""
    if fmt == "plain":
        return problem.prompt if benchmark == "humaneval" else instruction(benchmark, problem)
    if fmt == "alpaca":
        return alpaca_prompt(instruction(benchmark, problem))
    if fmt == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "prompt_format='chat' needs a tokenizer with a chat template "
                "(chat_template.jinja or tokenizer_config.json's chat_template)"
            )
        msgs = [{"role": "user", "content": instruction(benchmark, problem)}]
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"prompt_format {fmt!r}; valid: {list(PROMPT_FORMATS)}")


def stops(benchmark: str, fmt: str) -> tuple[str, ...]:
    """Text stops: HumanEval continued plainly ends at a new top-level statement; Alpaca at the
    next Alpaca block; a chat reply at the end-of-turn token (EOS / end ids, no text stop)."""
    if fmt == "chat":
        return ()
    if benchmark == "humaneval" and fmt == "plain":
        return HUMANEVAL_STOP
    return ALPACA_STOP


def to_completion(benchmark: str, problem: Problem, fmt: str, text: str) -> str:
    """The generated text as the scorer expects it (see the module docstring)."""
    if benchmark == "humaneval" and fmt != "plain":
        return reply_to_body(text, problem.tests.get("entry_point", ""))
    return text


def reply_to_body(reply: str, entry_point: str) -> str:
    """A reply holding `def entry_point(...)` (fenced or not) -> that function's body, indented
    4, preceded by the reply's other top-level imports, functions, classes and assignments;
    code without the entry point is used as the body itself."""
    code = extract_code(reply)
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return textwrap.indent(code, "    ")
    fn = next(
        (
            n
            for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point
        ),
        None,
    )
    if fn is None:
        return textwrap.indent(code, "    ")
    keep = (
        ast.Import,
        ast.ImportFrom,
        ast.FunctionDef,
        ast.AsyncFunctionDef,
        ast.ClassDef,
        ast.Assign,
        ast.AnnAssign,
    )
    parts = [ast.unparse(n) for n in tree.body if n is not fn and isinstance(n, keep)]
    parts += [ast.unparse(n) for n in fn.body]
    return textwrap.indent("\n".join(parts), "    ") + "\n"
