//! Test helpers shared by the VBUS crates; a dev-dependency only, never linked into a binary.
//!
//! [`crash`]: the SIGKILL harness. A crash test runs its own test binary again as a child that
//! works until it is killed at a random moment, printing what it has made durable on stdout;
//! the parent then reopens what the child left and checks that nothing acknowledged is lost or
//! torn.

#![forbid(unsafe_code)]

pub mod crash;
