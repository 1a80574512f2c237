//! Running untrusted, generated Python code.
//!
//! [`PythonEnv`] provisions the Python environment the code runs with (a venv holding the pinned
//! requirements, built once and shared). [`BwrapSandbox`] runs each job under bubblewrap: no
//! network, no view of the host beyond /usr, the environment and the job's own directories, no
//! capabilities, resource limits, a wall-clock timeout and capped output. Without a working
//! sandbox ([`BwrapSandbox::probe`]) generated code is never run.

mod bwrap;
mod cgroup;
mod pyenv;
mod shell;
mod staging;

pub use bwrap::BwrapSandbox;
pub use pyenv::PythonEnv;
pub use shell::BwrapShell;
