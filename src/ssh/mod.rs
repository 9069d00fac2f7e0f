//! SSH engine: one session per host, exec, upload, fan-out with a concurrency limit.
