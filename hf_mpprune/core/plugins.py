"""Where the method registry finds the methods it starts with, without `core` naming any of them.

`hf_mpprune/__init__.py` adds the package that registers the built-in methods (`hf_mpprune.methods`) as a provider;
the registry imports the providers at its first lookup (`load_providers`). So `import hf_mpprune` stays light, and a
lookup through any entry point (`get_method`, `list_methods`, `PruningConfig.from_dict`) sees every method.
"""

import importlib


_PROVIDERS: list[str] = []


def add_provider(module: str) -> None:
    """Import `module` (which registers methods when imported) before the registry's next lookup."""
    if module not in _PROVIDERS:
        _PROVIDERS.append(module)


def load_providers() -> None:
    """Import every provider not imported yet (cheap once they are: `importlib` returns the cached module)."""
    for module in list(_PROVIDERS):
        importlib.import_module(module)
