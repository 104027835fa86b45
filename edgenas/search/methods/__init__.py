"""Search methods, one module each; importing this package registers them all in :data:`METHODS`.

The import order below is the order ``edgenas list methods`` shows.
"""

from __future__ import annotations

# ruff: noqa: I001  (the imports register the methods: their order is the listing's)
from edgenas.search.methods import darts  # noqa: F401
from edgenas.search.methods import pc_darts  # noqa: F401
from edgenas.search.methods import adarts  # noqa: F401
from edgenas.search.methods import swd  # noqa: F401
from edgenas.search.methods import el_darts  # noqa: F401
from edgenas.search.methods import attn_darts  # noqa: F401
from edgenas.search.methods.base import METHODS, Method, get_method, make_method, register_method

__all__ = ["METHODS", "Method", "get_method", "make_method", "register_method"]
