"""papin: one interface to local large language models.

The library lives in :mod:`papin.llm`; the command line in :mod:`papin.cli`.
"""

__version__ = "0.1.0"
