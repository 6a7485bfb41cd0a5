"""``vuser`` subcommands, one module each, discovered by ``vuser.cli``.

A module here defines ``HELP`` (one line), ``DESCRIPTION`` (the ``--help``
text), ``configure(parser)`` and ``run(args) -> int``. Modules whose name starts
with ``_`` are helpers, not commands.
"""
