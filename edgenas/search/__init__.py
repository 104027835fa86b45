"""Differentiable architecture search: one supernet, six methods, one bilevel loop, budgets.

``METHODS`` maps each method name (``--method``) to its class; see :mod:`edgenas.search.methods`.
"""

from __future__ import annotations

from edgenas.search.methods import METHODS, Method, get_method, make_method

__all__ = ["METHODS", "Method", "get_method", "make_method"]
