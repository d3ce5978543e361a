//! The command line's side of the API: a client of it ([`client`]) and the tables it
//! prints from the answers ([`text`]), read through the types the server writes
//! ([`crate::api::types`]). `main.rs` parses the commands and calls these.

pub mod client;
pub mod text;
