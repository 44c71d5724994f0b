"""Whole workflows driven through the project's own command-line tools, stage by stage.

The quickstart, the replications and the benchmarks run the tools as a user would, as
subprocesses (:mod:`~megatron_adept.workflow.stages`), and read their results from the files
the tools write (importance.json, training checkpoints and their metrics), never from logs.
"""
