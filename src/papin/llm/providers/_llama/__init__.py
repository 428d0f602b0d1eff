"""What the two llama.cpp providers share: the in-process runtime, one generation as plain
events, the crash probe, the isolated worker, and the supervised ``llama-server``."""
