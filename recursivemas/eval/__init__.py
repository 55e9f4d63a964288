"""Evaluation: datasets, answer extraction and scoring, the harness that runs topologies over them, reports.

Nothing is imported here, so importing one submodule (say, the answer scorer) does not pull in the others.
"""
