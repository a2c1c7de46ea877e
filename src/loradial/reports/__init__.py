"""Reports: one self-contained HTML file (inline CSS and SVG, no scripts) from what a directory holds.

Owns: ``api`` (``loradial.report``), ``load`` (reading sweep / analysis / plan files), ``plots`` and
``svg`` (figures), ``render`` (the page), ``templates/``.

May import: models, the basics (it reads files, it never trains). Never sweeps, flows or cli.
"""
