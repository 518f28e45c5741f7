//! Per-release facts: where the Emscripten link put memory, stack, heap and table, and how
//! protocol bytes move. Differences between PGlite releases live here, not in `if version`
//! branches through the host.

/// How protocol bytes reach the backend.
#[derive(Debug)]
pub(crate) enum Transport {
    /// 0.2.x: request at address 1, reply right after it, both below `memory_base`.
    Cma,
}

/// One PGlite release line's memory layout and entry points.
#[derive(Debug)]
pub(crate) struct Profile {
    /// PostgreSQL major version of the build (what `PG_VERSION` in its data directories says).
    pub(crate) pg_major: u32,
    pub(crate) memory_base: u32,
    pub(crate) table_base: u32,
    pub(crate) stack_pointer: u32,
    pub(crate) heap_base: u32,
    pub(crate) initial_pages: u32,
    pub(crate) table_initial: u32,
    pub(crate) transport: Transport,
}

/// PGlite 0.2.x (PostgreSQL 16.4): `-sGLOBAL_BASE=16MB`, a 4 MiB stack above the data.
pub(crate) static PGLITE_0_2: Profile = Profile {
    pg_major: 16,
    memory_base: 16 * 1024 * 1024,
    table_base: 1,
    stack_pointer: 23_144_432,
    heap_base: 23_144_432,
    initial_pages: 2048,
    table_initial: 5360,
    transport: Transport::Cma,
};

/// The profile for a PGlite release, by its version string.
pub(crate) fn for_version(version: &str) -> Option<&'static Profile> {
    match version.split('.').take(2).collect::<Vec<_>>().as_slice() {
        ["0", "2"] => Some(&PGLITE_0_2),
        _ => None,
    }
}

impl Profile {
    /// Largest request the CMA buffer takes; the rest of the 16 MiB is left for the reply.
    pub(crate) fn max_request(&self) -> usize {
        match self.transport {
            Transport::Cma => 15 * 1024 * 1024,
        }
    }
}
