"""Reproducible nested-translation experiments: ``vuser experiment NAME``.

Each module here is one experiment. It defines ``SUMMARY`` (one line),
optionally ``configure(parser)`` for its options, and ``run(args)`` returning
an ``experiments._common.Result``: the table ``vuser experiment`` prints and
the plot it writes (``--out DIR``). Each module's docstring says whether it
runs against a guest or headless.
"""
