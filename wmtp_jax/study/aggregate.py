"""Write results.{json,md,png} from the cells finished in a study's output_dir.

    python -m wmtp_jax.study.aggregate storage/experiments/experiment-micro

Works on a partial study too (results.json then says `complete: false` and lists `missing`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from wmtp_jax.study import cells, report


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m wmtp_jax.study.aggregate OUTPUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    if not (out / cells.STUDY_FILE).exists():
        print(f"error: {out}: no {cells.STUDY_FILE} (not a study output_dir)", file=sys.stderr)
        return 2
    res = report.aggregate(out)
    print(report.markdown(res), end="")
    print(
        f"wrote {out / report.RESULTS_JSON}, {out / report.RESULTS_MD}, "
        f"{out / report.RESULTS_PNG}"
        + ("" if res["complete"] else f" (incomplete: missing {', '.join(res['missing'])})")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
