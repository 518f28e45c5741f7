//! The bridge's integration tests: real clients and raw sockets against a bridge in front of a
//! throwaway native PostgreSQL cluster.

mod concurrency;
mod filter;
mod harness;
mod lifecycle;
mod limits;
mod passwords;
mod protocol;
mod raw;
mod recovery;
mod sessions;
mod smoke;
