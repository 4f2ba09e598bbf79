"""Process-wide JAX settings that must be made before the first computation."""
from __future__ import annotations

import pathlib


def enable_compilation_cache(folder: pathlib.Path) -> None:
    """Persist compiled executables in `folder`, so a second identical run skips compilation."""
    import jax

    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
