//! The command line: clap structs, their validation into the library's configs, the
//! messages a user reads and the exit codes. The only module (with `main.rs`) that uses
//! `anyhow`; everything below returns [`crate::Error`].

pub mod logging;
