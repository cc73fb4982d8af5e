"""Benchmarks that write JSON: timing helpers and the machine's description (:mod:`.timing`), network blocks and
layouts (:mod:`.networks`), samplers (:mod:`.sampling`)."""
