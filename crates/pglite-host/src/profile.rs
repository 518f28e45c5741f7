//! Per-release facts: where the Emscripten link put memory, stack, heap and table, and how
//! protocol bytes move. Differences between PGlite releases live here, not in `if version`
//! branches through the host.

/// How protocol bytes reach the backend.
#[derive(Debug)]
pub(crate) enum Transport {
    /// 0.2.x: request at address 1, reply right after it, both below `memory_base`.
    Cma,
    /// 0.3.11+: PostgreSQL's recv()/send() call two host functions placed in the table.
    Callbacks,
}

/// One PGlite release line's memory layout and entry points.
#[derive(Debug)]
pub(crate) struct Profile {
    /// PostgreSQL major version of the build (what `PG_VERSION` in its data directories says).
    pub(crate) pg_major: u32,
    pub(crate) memory_base: u32,
    pub(crate) table_base: u32,
    /// The top of the C stack the host gives the guest, and its size (it grows down).
    pub(crate) stack_pointer: u32,
    pub(crate) stack_size: u32,
    pub(crate) heap_base: u32,
    pub(crate) initial_pages: u32,
    pub(crate) table_initial: u32,
    pub(crate) transport: Transport,
    /// Exports that run initdb-or-resume, start the backend (0.3+), and shut down.
    pub(crate) initdb_export: &'static str,
    pub(crate) backend_export: Option<&'static str>,
    pub(crate) shutdown_export: &'static str,
    /// Extension bundles this release ships that cannot load, and why.
    pub(crate) broken_extensions: &'static [(&'static str, &'static str)],
    /// `postgresql.conf` lines added to every cluster made from now on.
    pub(crate) new_cluster_settings: &'static str,
    /// `sizeof(Datum)` in the build: 4 on 32-bit wasm before PostgreSQL 18, which made it 8.
    pub(crate) datum_size: u32,
    /// Whether the session's own notifications come out whole in its replies (at commit,
    /// before ReadyForQuery). 0.2's transfer buffer garbles them: they are written outside it
    /// at the start of the next call while its length counts them.
    pub(crate) notifications: bool,
}

/// PGlite 0.2.x (PostgreSQL 16.4): `-sGLOBAL_BASE=16MB`, a 4 MiB stack above the data.
pub(crate) static PGLITE_0_2: Profile = Profile {
    pg_major: 16,
    memory_base: 16 * 1024 * 1024,
    table_base: 1,
    stack_pointer: 23_144_432,
    stack_size: 4 << 20,
    heap_base: 23_144_432,
    initial_pages: 2048,
    table_initial: 5360,
    transport: Transport::Cma,
    initdb_export: "pg_initdb",
    backend_export: None,
    shutdown_export: "pg_shutdown",
    // The build's default, open_datasync, makes every WAL write synchronous: a bulk INSERT
    // ... SELECT ran 2.2x slower than with fdatasync, which syncs at commit (as PostgreSQL
    // does on Linux, and PGlite 0.3 does). Both are durable; clusters made earlier keep theirs.
    new_cluster_settings: "wal_sync_method = fdatasync\n",
    datum_size: 4,
    notifications: false,
    broken_extensions: &[(
        "pgcrypto",
        "its module imports OpenSSL functions (EVP_*) that PGlite 0.2's core does not export; \
         PGlite 0.3.16 (PostgreSQL 17.5) carries them: use --pglite-version 0.3.16",
    )],
};

/// PGlite 0.3.11+ (PostgreSQL 17.5). The JS gives C code a 64 KiB shadow stack right above
/// the data (2 700 080) with no overflow check, and PostgreSQL's stack-depth check never fires
/// here, so plpgsql recursion of depth ~60 overwrites static data. Both the stack pointer and
/// the heap base are imports, so the host moves them up for an 8 MiB stack: a deliberate
/// deviation from the JS runtime.
pub(crate) static PGLITE_0_3: Profile = Profile {
    pg_major: 17,
    memory_base: 1024,
    table_base: 1,
    stack_pointer: 2_700_080 + (8 << 20),
    stack_size: 8 << 20,
    heap_base: 2_700_080 + (8 << 20),
    initial_pages: 256,
    table_initial: 5610,
    transport: Transport::Callbacks,
    initdb_export: "pgl_initdb",
    backend_export: Some("pgl_backend"),
    shutdown_export: "pgl_shutdown",
    broken_extensions: &[],
    new_cluster_settings: "",
    datum_size: 4,
    notifications: true,
};

/// The profile for a PGlite release, by its version string.
pub(crate) fn for_version(version: &str) -> Option<&'static Profile> {
    match version.split('.').take(2).collect::<Vec<_>>().as_slice() {
        ["0", "2"] => Some(&PGLITE_0_2),
        ["0", "3"] => version
            .split('.')
            .nth(2)
            .and_then(|patch| patch.parse::<u32>().ok())
            .filter(|&p| p >= 11)
            .map(|_| &PGLITE_0_3),
        _ => None,
    }
}

impl Profile {
    /// Where argument `n`'s value lies in a `FunctionCallInfoBaseData` (after `flinfo`,
    /// `context`, `resultinfo`, `fncollation`, `isnull` and `nargs`, the `NullableDatum`s,
    /// aligned to a Datum).
    pub(crate) fn fcinfo_arg_offset(&self, n: u32) -> u32 {
        let header: u32 = 4 * 4 + 1 + 1 + 2;
        let args = header.div_ceil(self.datum_size) * self.datum_size;
        let nullable_datum = (self.datum_size + 1).div_ceil(self.datum_size) * self.datum_size;
        args + n * nullable_datum
    }

    /// Largest request the transport takes. 0.2's requests and replies share the 16 MiB below
    /// `memory_base`: what a request does not take is left for the reply.
    pub(crate) fn max_request(&self) -> usize {
        match self.transport {
            Transport::Cma => 15 * 1024 * 1024,
            // Bounded by wasm memory (2 GiB) and what a client may send (the bridge caps
            // messages at 64 MiB); keep a request well inside the guest's address space.
            Transport::Callbacks => 1 << 30,
        }
    }
}
