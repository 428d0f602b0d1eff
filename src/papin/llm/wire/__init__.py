"""Sans-I/O wire formats: pure functions that build requests and parse responses and frames.

Nothing here performs I/O; the async core and the synchronous facade share these modules.
"""
