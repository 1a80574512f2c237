//! This process's identity as a node of a batch: its host, pid and start time, as
//! `host-pid-starthex`. The PostgreSQL store registers the node under it, and the OpenTelemetry
//! resource carries it as `service.instance.id`, so that traces and metrics say which node sent
//! them.

use std::sync::OnceLock;

/// The host name, as the kernel knows it.
pub fn host() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// This process's node id; the same for the process's whole life.
pub fn id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        format!("{}-{}-{nanos:x}", host(), std::process::id())
    })
}
