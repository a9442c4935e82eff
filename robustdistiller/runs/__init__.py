"""Run plumbing: atomic checkpoints, the run folder and its signature, command-line options, fingerprints, write
errors, data-loader workers (capped at the CPUs), log lines of results."""
