"""Apache Beam: the batch pipeline, record I/O, sharding, batching and the engine adapter."""
