"""Test data without downloads: speech synthesis and the mini corpus, and miniature corpora in the real layouts (fixtures)."""
