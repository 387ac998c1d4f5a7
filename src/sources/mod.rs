//! Decoders from each source kind to `SourceChange`s.
