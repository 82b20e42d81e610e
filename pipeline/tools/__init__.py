"""Collections to build from: synthetic speakers and speech-like voices (demo, tests, benchmarks)."""
