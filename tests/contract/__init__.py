"""Provider contract suite: every provider runs the same tests (see ``backends.py``)."""
