"""Recipes: YAML files that describe a whole run, and the runner that executes them.

Owns `schema` (`Recipe`, `load_recipe`, validation, `--set` overrides), `runner` (`execute` / `run_recipe` and the
`run` / `push` verbs: load → data → analyze → prune → fine-tune / distill → evaluate → audit → save → push),
`inputs` (the recipe's data roles through `hf_mpprune.data`), `stages` (evaluate, prune, distill, audit),
`oneshot` (`hf_mpprune.oneshot`). The shipped recipes live in the repository's top-level `recipes/`; `library/` is
a link to it, so the wheel carries them as package data and they are found by name from an installed package.
May import: every stage below it: core, spectral, methods, training, deploy, certify, metrics,
hub, `hf_mpprune.pruner`, `hf_mpprune.data` and `hf_mpprune.builtins`.
"""
