//! End-to-end tests: the real PGlite artifacts, the real `nself-embedded` command and real
//! clients (psql, pgbench, tokio-postgres, sqlx), connecting with the seed's connection string
//! (`host=DIR dbname=nself sslmode=disable`) unless a test is about something else.
//!
//! The artifact, compiled module and template cluster are shared with the host's tests in
//! `<workspace>/target/test-cache` (the command gets it as `NSELF_CACHE_DIR`), so only the
//! first test of a CI run downloads, compiles and runs initdb. psql and pgbench must be on
//! PATH: a test that needs one fails, naming the package to install.

mod support;

mod cache;
mod clients;
mod copy;
mod differential;
mod drivers;
mod facade;
mod interrupts;
mod isolation;
mod lifecycle;
mod migrations;
mod native;
mod notify;
mod pgbench;
mod psql;
mod resilience;
mod roles;
mod seed;
