"""The WMTP study: arms × seeds trained and evaluated alike, intervals, critic credit.

`experiment` is the `experiment` pipeline (configs/experiment.py) that runs the study, `cells` runs
(and resumes) the cells, `credit` measures where the critic puts the blame against the mutated
spans, `intervals` holds the bootstrap interval math, `report` writes results.{json,md,png};
`python -m wmtp_jax.study.aggregate DIR` re-writes the report from the cells on disk. The study
sits above the pipelines: it runs them, and no pipeline imports it.
"""
