//! Adapters: other protocols turned into HTTP requests for a `Deliver` sink.
