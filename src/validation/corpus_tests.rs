//! Corpus tests: placeholder replaced below.
