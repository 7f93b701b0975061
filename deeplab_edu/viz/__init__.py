"""The book's figures and code listings. Chapters call these; plotting code lives nowhere else.

One module per part of the book: :mod:`~deeplab_edu.viz.data`, and the network, CRF and
results figures beside it.
"""

from __future__ import annotations

import inspect
from typing import Any


def show_source(obj: Any) -> Any:
    """Render the source of a package function or class in the page, so that the code the
    reader sees is the code that ran.

    Args:
        obj: a function, class or module of :mod:`deeplab_edu`.

    Returns:
        An IPython ``Code`` object (displayed with syntax highlighting in a notebook).
    """
    from IPython.display import Code  # here: IPython is there in a notebook, not a dependency

    return Code(inspect.getsource(obj), language="python")
