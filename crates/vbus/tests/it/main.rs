//! End-to-end tests: the real `vbus` binary in temporary directories, the real HTTP server on a
//! loopback port.

mod api;
mod config;
mod fuzz;
mod init;
mod integrity;
mod load;
mod scan;
mod support;
mod sync;
mod up;
