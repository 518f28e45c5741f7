//! Integration tests of the host on the real PGlite artifacts (every pinned release). Each
//! artifact, its compiled module and its template cluster are shared by every test in a cache
//! under the workspace's `target/test-cache`, so only the first test run downloads and compiles.

mod support;

mod cache;
mod crash;
mod extensions;
mod full_disk;
mod lifecycle;
mod protocol;
mod session;
mod sql;
mod wire;
