"""Recipes: YAML files that describe a whole run, and the runner that executes them.

Owns `schema` (`Recipe`, `load_recipe`, validation), `runner` (`run_recipe`: analyze → prune → fine-tune /
distill → evaluate → audit → save → push) and the shipped recipes under `library/` (package data, so they work
from an installed wheel). May import: every stage below it and `hf_mpprune.pruner`, `hf_mpprune.builtins`.
"""
