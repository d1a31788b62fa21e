"""The WMTP study: arms × seeds trained and evaluated alike, intervals, critic credit.

`cells` runs (and resumes) the cells, `credit` measures where the critic puts the blame against
the mutated spans, `bootstrap` holds the interval math, `report` writes results.{json,md,png};
`python -m wmtp_jax.study.aggregate DIR` re-writes the report from the cells on disk.
"""
