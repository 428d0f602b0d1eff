"""The ``papin`` command line: a thin click + rich shell over :mod:`papin.llm`.

Entry point: :func:`papin.cli.main.main` (the ``papin`` console script and ``python -m papin``).
Each command group lives in its own module; heavy packages (rich, pydantic, httpx) are
imported only when a command runs.
"""
