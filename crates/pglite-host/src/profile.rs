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
    /// 0.5+: the same callbacks, with the host running PostgreSQL's main loop one message at
    /// a time (`PostgresMainLoopOnce`) until the request is consumed; an ERROR unwinds as
    /// `exit(100)` and is finished by `PostgresMainLongJmp`.
    MainLoop,
}

/// How the module is linked, and so what the host creates before instantiating it.
#[derive(Debug)]
pub(crate) enum Linking {
    /// 0.2, 0.3: a relocatable main module; the host creates memory, table, memory and table
    /// bases, stack pointer and heap base at the profile's addresses, and data exports are
    /// offsets from `memory_base`.
    Relocatable,
    /// 0.5+: only the memory is imported; the module defines its table and globals, and data
    /// exports are absolute addresses (`memory_base` is 0).
    Fixed,
}

/// How an instance starts, stops and makes a new cluster.
#[derive(Debug)]
pub(crate) enum Start {
    /// 0.2, 0.3: `main` with `REPL=N` returns at once; then the initdb-or-resume export runs
    /// (making a cluster when there is none), then the backend's start (0.3), and the
    /// shutdown export ends it.
    Exports { initdb: &'static str, backend: Option<&'static str>, shutdown: &'static str },
    /// 0.5+: a separate module (`initdb.wasm`) makes new clusters, running PostgreSQL's
    /// bootstrap and single-user modes in a second instance (see `instance/initdb.rs`);
    /// `main` with `--single` starts the backend and ends in `exit(99)`.
    SingleUser,
}

/// Where the guest expects its files.
#[derive(Debug)]
pub(crate) struct Paths {
    /// The installation: `bin`, `lib`, `share` and the files beside them.
    pub(crate) prefix: &'static str,
    /// The data directory (PGDATA).
    pub(crate) data: &'static str,
    /// The user's home directory (scratch).
    pub(crate) home: &'static str,
    /// Entries of the package under `prefix` mounted read-only (directories or files).
    pub(crate) package: &'static [&'static str],
    /// Files under `prefix` the guest writes (made empty in scratch at every boot).
    pub(crate) scratch_files: &'static [&'static str],
}

const PATHS_0_2: Paths = Paths {
    prefix: "/tmp/pglite",
    data: "/tmp/pglite/base",
    home: "/home/web_user",
    package: &["bin", "lib", "share", "password"],
    scratch_files: &[],
};

const PATHS_0_5: Paths = Paths {
    prefix: "/pglite",
    data: "/pglite/data",
    home: "/home/postgres",
    package: &["bin", "lib", "share", "password", "icu", "locale-a"],
    // Where initdb and the PostgreSQL it runs exchange the bootstrap scripts and output.
    scratch_files: &["pgstdin", "pgstdout"],
};

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
    pub(crate) linking: Linking,
    pub(crate) start: Start,
    pub(crate) paths: &'static Paths,
    /// Extension bundles this release ships that cannot load, and why.
    pub(crate) broken_extensions: &'static [(&'static str, &'static str)],
    /// `postgresql.conf` lines added to every cluster made from now on.
    pub(crate) new_cluster_settings: &'static str,
    /// `sizeof(Datum)` in the build: 4 on 32-bit wasm up to PostgreSQL 18 (0.5 still exports
    /// `Int64GetDatum`, which only exists then); 19 made it 8 everywhere.
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
    linking: Linking::Relocatable,
    start: Start::Exports { initdb: "pg_initdb", backend: None, shutdown: "pg_shutdown" },
    paths: &PATHS_0_2,
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
    linking: Linking::Relocatable,
    start: Start::Exports { initdb: "pgl_initdb", backend: Some("pgl_backend"), shutdown: "pgl_shutdown" },
    paths: &PATHS_0_2,
    broken_extensions: &[],
    new_cluster_settings: "",
    datum_size: 4,
    notifications: true,
};

/// What pgvector and the other extensions PGlite 0.5+ publishes as npm packages of their own
/// lack on 0.6 (PostgreSQL 19).
const NOT_BUILT_FOR_19: &str = "no PGlite build of it for PostgreSQL 19 has been published (its npm package \
     targets PostgreSQL 18): use --pglite-version 0.5.17";

/// PGlite 0.5.x (PostgreSQL 18). Not relocatable: only the memory is imported, data symbols are
/// absolute, and the C stack (8 MiB, Emscripten's `STACK_SIZE`) sits right above the data,
/// where the module's `__stack_pointer` starts (`stack_pointer` 0: read from the module).
pub(crate) static PGLITE_0_5: Profile = single_user(18, 4, &[]);

/// PGlite 0.6.x (PostgreSQL 19): laid out and started as 0.5.
pub(crate) static PGLITE_0_6: Profile = single_user(
    19,
    8,
    &[
        ("vector", NOT_BUILT_FOR_19),
        ("age", NOT_BUILT_FOR_19),
        ("pg_hashids", NOT_BUILT_FOR_19),
        ("pg_ivm", NOT_BUILT_FOR_19),
        ("pg_textsearch", NOT_BUILT_FOR_19),
        ("pg_uuidv7", NOT_BUILT_FOR_19),
        ("pgtap", NOT_BUILT_FOR_19),
    ],
);

/// The profile of a single-user line (0.5 on) running PostgreSQL `pg_major`.
const fn single_user(
    pg_major: u32,
    datum_size: u32,
    broken_extensions: &'static [(&'static str, &'static str)],
) -> Profile {
    Profile {
        pg_major,
        memory_base: 0,
        table_base: 1,
        stack_pointer: 0,
        stack_size: 8 << 20,
        heap_base: 0,
        initial_pages: 2048,
        table_initial: 0,
        transport: Transport::MainLoop,
        linking: Linking::Fixed,
        start: Start::SingleUser,
        paths: &PATHS_0_5,
        broken_extensions,
        new_cluster_settings: "",
        datum_size,
        notifications: true,
    }
}

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
        ["0", "5"] => Some(&PGLITE_0_5),
        ["0", "6"] => Some(&PGLITE_0_6),
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

    /// Whether the transport streams a request and its reply (see `stream`).
    pub(crate) fn streams(&self) -> bool {
        !matches!(self.transport, Transport::Cma)
    }

    /// Largest request the transport takes. 0.2's requests and replies share the 16 MiB below
    /// `memory_base`: what a request does not take is left for the reply.
    pub(crate) fn max_request(&self) -> usize {
        match self.transport {
            Transport::Cma => 15 * 1024 * 1024,
            // Bounded by wasm memory (2 GiB) and what a client may send (the bridge caps
            // messages at 64 MiB); keep a request well inside the guest's address space.
            Transport::Callbacks | Transport::MainLoop => 1 << 30,
        }
    }
}
