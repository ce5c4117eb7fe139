"""Product titles as people read them.

Amazon's metadata stores many titles HTML-escaped (``Grip &amp; Grab``, ``10&quot;
Flying Disc``): 1,652 of Toys' 10,457 titles, 811 of Sports', 466 of Tools'.  They are
decoded once, here at load, so prompts, listings and ``--history`` matching all see the
text a shopper saw (and a title that decodes to nothing gets the placeholder).  A title
escaped twice (``&amp;quot;``) keeps its second level: decoding is done exactly once.
"""

from __future__ import annotations

import html
from typing import Any

from xcross_registry.plugin_helpers import title_text


def product_title(value: Any) -> str:
    """A metadata title, HTML entities decoded once; missing or blank: the placeholder."""
    return title_text(html.unescape(value) if isinstance(value, str) else value)
