"""A griffe extension for the API pages: the docstrings' Sphinx roles and literal-block markers in Markdown.

The docstrings use Google sections (``Args:``, ``Returns:``) with reST inline markup: ``:func:`name``` roles
and paragraphs ending in ``::`` before an indented block. Markdown shows those literally, so on loading each
docstring a role becomes a code span of its target (``~a.b.c`` shows ``c``, as Sphinx does) and a trailing
``::`` becomes ``:`` (the indented block after it is already a code block in Markdown). Only what the site
shows changes; the source is left as it is.
"""
import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const|ref|term):`(~?)([^`<]+?)(?:\s*<[^`]*>)?`")


def _role(match):
    target = match.group(2).strip()
    return "`%s`" % (target.rsplit(".", 1)[-1] if match.group(1) else target)


def markdown_docstring(text):
    """``text`` with reST roles as code spans and paragraph-ending ``::`` as ``:``."""
    text = _ROLE.sub(_role, text)
    return re.sub(r"(\S) ?::$", r"\1:", text, flags=re.MULTILINE)


class RestInlineMarkup(griffe.Extension):
    """Rewrites every docstring with :func:`markdown_docstring` as griffe loads it."""

    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)
