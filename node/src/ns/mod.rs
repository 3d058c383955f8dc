//! Namespaces and the scheduler (issue 10). The placement policy comes
//! first, as a pure function with its own tests; the `namespace`/`ns`
//! commands, the queue and the stored schedule build on it.

// Until the `ns` and `vm` commands call it, only its tests do.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod schedule;
