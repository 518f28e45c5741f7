//! One running PGlite instance: its store, a protocol exchange through the release's entry
//! points, giving zeroed memory back to the OS, and shutdown. Boot is in `boot`, the framing
//! that cuts a request into calls in `frames`. Lives on whichever thread holds the handle's
//! lock; knows nothing of locks or templates.

mod boot;
mod frames;
mod initdb;
mod link;
mod single;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use wasmtime::{Memory, Store, TypedFunc};

use self::frames::{
    FLUSH, READY_FOR_QUERY_LEN, ends_unit_of_work, first_frame_types, last_frame, query_units, work_units,
};
use crate::Error;
use crate::imports::Ctx;
use crate::profile::Profile;

pub(crate) use self::frames::{drop_debug_notices, frame_len};

pub(crate) use self::initdb::{Child, make_cluster as initdb_make_cluster};

/// `pg_initdb` result bits.
pub(crate) mod initdb_bits {
    pub(crate) const FAILED: i32 = 1;
    /// The cluster existed before this boot (resumed rather than made by initdb).
    pub(crate) const HAS_DB: i32 = 4;
    /// What a resumed cluster's boot returns (called, has a database, has a user).
    pub(crate) const RESUMED: i32 = 2 | HAS_DB | 8;
}

/// Host directories the guest file system is made of.
pub(crate) struct Dirs<'a> {
    /// Backs `/tmp/pglite/base` (PGDATA).
    pub(crate) data: &'a Path,
    /// The extracted package: `tmp/pglite/{bin,lib,share}` beneath it.
    pub(crate) package: &'a Path,
    /// Per-instance scratch backing `/` (`/tmp`, `/home/web_user`, `/dev/shm`).
    pub(crate) scratch: &'a Path,
    /// Where compiled side modules are cached.
    pub(crate) module_cache: Option<PathBuf>,
    /// Unpacked extension bundles (`lib/`, `share/` beneath each).
    pub(crate) extensions: &'a [PathBuf],
    /// Server-wide settings (see [`Config::settings`](crate::Config::settings)).
    pub(crate) settings: &'a [(String, String)],
    /// The main module's wasm and its SHA-256, for facts read from its code.
    pub(crate) wasm: &'a Path,
    pub(crate) wasm_sha256: &'a str,
    /// What other threads interrupt a serving instance through (a private one if `None`).
    pub(crate) remote: Option<&'a Arc<crate::interrupts::Remote>>,
}

/// The exports a protocol exchange goes through.
enum Entry {
    /// 0.2: request written at address 1, processed, reply read after it.
    Cma { write: TypedFunc<i32, ()>, one: TypedFunc<(), ()>, read: TypedFunc<(), i32> },
    /// 0.3: one call; PostgreSQL reads and writes through the wire callbacks.
    Callbacks { one: TypedFunc<(i32, i32), ()> },
    /// 0.5+: PostgreSQL's main loop, one message per call, through the wire callbacks.
    MainLoop(single::MainLoop),
}

/// How an instance is stopped.
enum Shutdown {
    /// 0.2, 0.3: the shutdown export (`proc_exit`, which runs the shutdown checkpoint).
    Export(TypedFunc<(), ()>),
    /// 0.5+: inactive, then the exit handlers.
    SingleUser(single::Stop),
}

pub(crate) struct Instance {
    store: Store<Ctx>,
    instance: wasmtime::Instance,
    entry: Entry,
    shutdown: Shutdown,
    memory: Memory,
    profile: &'static Profile,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Before the store, and the memory with it, goes.
        self.store.data_mut().interrupts.detach();
    }
}

/// Why an exchange failed.
pub(crate) enum ExecError {
    /// Refused before reaching the guest; the instance is fine.
    Refused(Error),
    /// The instance is dead and must be rebuilt from disk.
    Dead(Error),
}

/// Whether `bytes` are all zero: a cheap look at the start rejects most pages with data, then
/// an OR over the rest, which compiles to wide vector loads.
fn is_zero(bytes: &[u8]) -> bool {
    let (head, rest) = bytes.split_at(bytes.len().min(64));
    head.iter().fold(0, |acc, &b| acc | b) == 0 && rest.iter().fold(0, |acc, &b| acc | b) == 0
}

/// Asks the kernel to back `memory` with transparent huge pages where it can (`huge`), or no
/// longer to. Boot `memset`s the whole buffer pool (128 MB) to zero, which the patched `memset`
/// (`engine/patch.rs`) reads and finds zero: on 4 KiB pages that read is 32,768 faults of the
/// zero page, 40 % of a warm restart; on 2 MiB pages it is 64 (the huge zero page). The rest of
/// what boot writes is faulted in 2 MiB at a time too. (Whether the pool lies in the memory the
/// module starts with or in what it grows differs between releases, so all of it is advised.)
/// Once boot is done the trim hands the zero pages back and the memory goes back to small
/// pages: khugepaged would otherwise fold them into huge pages again (with its default
/// `max_ptes_none` it fills a 2 MiB range around a single resident page), 10 MiB more resident
/// within seconds. A huge page the trim frees only in
/// part (~10 of them, at the edges of what boot wrote) stays with the kernel whole until its
/// deferred split, which runs under memory pressure: RSS does not count it. Only advice:
/// contents and behaviour stay the same, and a kernel without THP ignores it.
fn advise_pages(store: &mut wasmtime::Store<Ctx>, memory: wasmtime::Memory, huge: bool) {
    let base = memory.data_ptr(&*store);
    // Up to the end of what the memory may grow into: the engine reserves it up front and
    // never moves a memory, so the advice covers what later grows too.
    let max = memory.ty(&*store).maximum().unwrap_or(u64::MAX).saturating_mul(65536);
    let Ok(end) = usize::try_from(max.min(crate::engine::MEMORY_RESERVATION)) else {
        return;
    };
    let advice = if huge { rustix::mm::Advice::LinuxHugepage } else { rustix::mm::Advice::LinuxNoHugepage };
    // SAFETY: `[base, base + end)` lies inside the reservation wasmtime made for this memory
    // (`MEMORY_RESERVATION`, set in `engine.rs`). MADV_(NO)HUGEPAGE only marks the mapping as
    // eligible for huge pages or not: it changes no byte and no protection, so nothing that
    // reads or writes the memory, here or in the guest, can observe it.
    #[expect(unsafe_code, reason = "advice on our own linear memory's reservation")]
    let advised = unsafe { rustix::mm::madvise(base.cast(), end, advice) };
    if let Err(err) = advised {
        tracing::debug!(%err, huge, "madvise on the linear memory failed; its pages stay as they are");
    }
}

impl Instance {
    /// Gives the pages of linear memory in `[offset, offset + len)` that hold only zeros back
    /// to the OS; they read as zeros again when touched. On huge pages (see [`advise_pages`])
    /// what boot writes makes whole 2 MiB ranges resident, about half of them zero (15 MiB of
    /// 27 at the first answer on 0.3.16; 12 MiB stay resident). The first slice
    /// (at 0) puts the memory back on small pages. Returns where the next slice starts, `None`
    /// past the end.
    pub(crate) fn release_zero_pages(&mut self, offset: usize, len: usize) -> Option<usize> {
        if offset == 0 {
            advise_pages(&mut self.store, self.memory, false);
        }
        let page = rustix::param::page_size();
        let memory = self.memory.data_mut(&mut self.store);
        if offset >= memory.len() {
            return None;
        }
        let base = memory.as_mut_ptr();
        let first = offset / page;
        let end = (offset.saturating_add(len).min(memory.len())) / page;
        let mut run: Option<usize> = None;
        for index in first..=end {
            let zero = index < end && is_zero(&memory[index * page..(index + 1) * page]);
            match (zero, run) {
                (true, None) => run = Some(index),
                (false, Some(start)) => {
                    // SAFETY: the range lies inside the store's linear memory, which boot
                    // creates with `Memory::new`: a private anonymous mapping with no
                    // copy-on-write image behind it, that nothing else touches while we hold
                    // `&mut self`. It holds only zeros, and after MADV_DONTNEED it reads back as
                    // the same zeros.
                    #[expect(unsafe_code, reason = "madvise on zero pages of our own linear memory")]
                    let advised = unsafe {
                        rustix::mm::madvise(
                            base.add(start * page).cast(),
                            (index - start) * page,
                            rustix::mm::Advice::LinuxDontNeed,
                        )
                    };
                    if let Err(err) = advised {
                        tracing::debug!(%err, "madvise(DONTNEED) failed; pages stay resident");
                    }
                    run = None;
                }
                _ => {}
            }
        }
        Some(end * page).filter(|&next| next < memory.len())
    }

    /// One protocol exchange: frontend messages in, every backend message they produce out.
    /// `interrupt` says how the caller may cancel the statement running (see
    /// [`Interrupt`](crate::Interrupt)).
    pub(crate) fn exec(&mut self, request: &[u8], interrupt: crate::Interrupt) -> Result<Vec<u8>, ExecError> {
        if request.is_empty() && self.store.data().stream.is_none() {
            return Ok(Vec::new());
        }
        // A leading 0 byte is a startup-phase packet: it traps (0.2) or starts a bogus
        // authentication (0.3) in the backend.
        if request.first() == Some(&0) {
            return Err(ExecError::Refused(Error::StartupPacket));
        }
        let max = self.profile.max_request();
        if request.len() > max {
            return Err(ExecError::Refused(Error::RequestTooLarge { len: request.len(), max }));
        }
        self.store.data().interrupts.remote.begin_exchange(interrupt);
        let reply = self.exchange(request);
        let mut reply = match reply {
            Ok(reply) => reply,
            Err(err) => {
                crate::interrupts::finish_exchange(&mut self.store, &mut Vec::new());
                return Err(err);
            }
        };
        crate::interrupts::finish_exchange(&mut self.store, &mut reply);
        // An error rolls back settings made in its transaction. A streamed exchange counts as
        // one that may have failed: an error may have left in a piece it handed on.
        if first_frame_types(&reply).any(|ty| ty == b'E') || self.store.data().stream.is_some() {
            self.store.data_mut().interrupts.settings_changed();
        }
        crate::interrupts::refresh_if_changed(&mut self.store).map_err(|e| ExecError::Dead(Error::guest(e)))?;
        drop_debug_notices(&mut reply);
        Ok(reply)
    }

    /// [`exec`](Self::exec) with the rest of the request coming from `stream` while it runs,
    /// and the reply's COPY data leaving through it (see `stream`). Refused on 0.2, whose
    /// transport takes a request whole.
    pub(crate) fn exec_streamed(
        &mut self,
        request: &[u8],
        stream: crate::Stream,
        interrupt: crate::Interrupt,
    ) -> Result<Vec<u8>, ExecError> {
        if !self.profile.streams() {
            return Err(ExecError::Refused(Error::NoStreaming));
        }
        self.store.data_mut().stream = Some(stream.into());
        let result = self.exec(request, interrupt);
        let ctx = self.store.data_mut();
        ctx.stream = None;
        ctx.wire_base = 0;
        result
    }

    /// [`exec`](Self::exec) through the release's transport.
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, ExecError> {
        match &self.entry {
            Entry::Cma { .. } => {
                // 0.2's error path answers ErrorResponse + ReadyForQuery at once and leaves the
                // rest of the input unread; the next call then replays that rest at a stale
                // offset and drops its own input (node's PGlite 0.2.17 does the same). So each
                // unit of work goes in its own call, and after a failed one its leftover is
                // drained with a throwaway Flush: never parsed when input is left over, and
                // ignored while the backend skips to the next Sync when none is.
                let mut reply = Vec::new();
                for group in work_units(request) {
                    let start = reply.len();
                    reply.extend(self.cma_call(group)?);
                    // 0.2 ends every call with ReadyForQuery, whatever its last message was;
                    // PostgreSQL sends one only for Sync, Query and FunctionCall.
                    if !ends_unit_of_work(group) && last_frame(&reply[start..]).is_some_and(|(ty, _)| ty == b'Z') {
                        reply.truncate(reply.len() - READY_FOR_QUERY_LEN);
                    }
                    let failed = first_frame_types(&reply[start..]).any(|ty| ty == b'E');
                    if failed && group.len() > frame_len(group).unwrap_or(group.len()) {
                        self.cma_call(FLUSH)?;
                    }
                }
                Ok(reply)
            }
            Entry::MainLoop(main_loop) => {
                let main_loop = main_loop.clone();
                single::exchange(&mut self.store, &main_loop, request)
            }
            Entry::Callbacks { .. } => {
                // A failed Query followed by more input in the same call loses its
                // ReadyForQuery on 0.3, so each Query and FunctionCall goes in a call of its
                // own; Sync groups may share one. A stream goes on from the last.
                let mut stream = self.store.data_mut().stream.take();
                let mut groups = query_units(request);
                if groups.is_empty() && stream.is_some() {
                    groups.push(&[]);
                }
                let last = groups.len().saturating_sub(1);
                let mut reply = Vec::new();
                for (i, group) in groups.into_iter().enumerate() {
                    if i == last {
                        self.store.data_mut().stream = stream.take();
                    }
                    reply = self.callbacks_call(group, reply)?;
                }
                Ok(reply)
            }
        }
    }

    /// One exchange through the wire callbacks. 0.3's loop stops when the 8 KiB receive buffer
    /// it refills from the callback happens to be used up at a message boundary, even with
    /// input left; the rest, which starts on a message boundary, goes in further calls.
    ///
    /// With a stream attached, the request goes on with its pieces, each call's first byte
    /// waited for between calls (see `stream`); a streamed request holds no Terminate.
    /// The reply goes on from `reply`, the earlier calls' (which a stream hands on first).
    fn callbacks_call(&mut self, request: &[u8], reply: Vec<u8>) -> Result<Vec<u8>, ExecError> {
        let Entry::Callbacks { one } = &self.entry else { unreachable!("callback entry point") };
        let one = one.clone();
        self.store.data_mut().set_input(request);
        self.store.data_mut().wire_out = reply;
        let streamed = self.store.data().stream.is_some();
        let mut result = Ok(());
        let mut at = 0;
        while self.store.data_mut().input_left() {
            let ctx = self.store.data();
            // The length is only checked for an empty packet (< 2): more of a streamed
            // request may follow what is at hand.
            let left = ctx.wire_in.len() - ctx.wire_pos;
            let left = if streamed { left.max(2) } else { left };
            let first = ctx.wire_in[ctx.wire_pos];
            result = one.call(&mut self.store, (left.min(i32::MAX as usize) as i32, i32::from(first)));
            let taken = self.store.data().wire_taken();
            // Nothing more was read, or the backend failed, or the client said goodbye.
            if result.is_err()
                || taken == at
                || (!streamed && first_frame_types(&request[at..taken]).any(|ty| ty == b'X'))
            {
                break;
            }
            at = taken;
        }
        let reply = self.store.data_mut().take_output();
        result.map_err(|e| ExecError::Dead(Error::guest(e)))?;
        Ok(reply)
    }

    /// One CMA exchange: request at address 1, reply right after it.
    fn cma_call(&mut self, request: &[u8]) -> Result<Vec<u8>, ExecError> {
        let Entry::Cma { write, one, read } = &self.entry else { unreachable!("CMA entry points") };
        let dead = |e: wasmtime::Error| ExecError::Dead(Error::guest(e));
        write.call(&mut self.store, request.len() as i32).map_err(dead)?;
        self.memory.data_mut(&mut self.store)[1..1 + request.len()].copy_from_slice(request);
        one.call(&mut self.store, ()).map_err(dead)?;
        let n = read.call(&mut self.store, ()).map_err(dead)? as u32 as usize;
        let start = request.len() + 2;
        let room = self.profile.memory_base as usize - start;
        if n > room {
            // The reply ran over PostgreSQL's static data: nothing here can be trusted.
            return Err(ExecError::Dead(Error::ReplyOverflow { len: n, max: room }));
        }
        Ok(self.memory.data(&self.store)[start..start + n].to_vec())
    }

    /// Checks that a cancel reaches the backend: a statement run with its cancel flag raised
    /// must fail with `57014`. If it does not, cancel is turned off (and the flag word, which
    /// must have been zero, is zero again).
    fn calibrate_cancel(&mut self) -> Result<(), ExecError> {
        if !self.store.data().interrupts.can_cancel() {
            return Ok(());
        }
        let cancel = Some(Arc::new(AtomicBool::new(true)));
        let reply = self.exec(&crate::sql::query_message("SELECT 1"), crate::Interrupt { cancel, deadline: None })?;
        let cancelled = crate::sql::first_error_code(&reply).as_deref() == Some("57014");
        if !cancelled {
            tracing::warn!("cancelling a statement had no effect; cancel requests will be ignored");
            crate::interrupts::disable_cancel(&mut self.store);
        }
        self.store.data_mut().events = crate::SessionEvents::default();
        Ok(())
    }

    /// Sets the session's connection defaults (see `hooks::set_connection_defaults`); a
    /// failure leaves the instance in an unknown state, so it is dead.
    pub(crate) fn set_connection_defaults(&mut self, settings: &[(String, String)]) -> Result<Vec<String>, ExecError> {
        crate::hooks::set_connection_defaults(&mut self.store, &self.instance, settings)
            .map_err(|e| ExecError::Dead(Error::guest(e)))
    }

    /// What may have changed session state since the last call (see `hooks`).
    pub(crate) fn session_timeouts(&self) -> crate::SessionTimeouts {
        self.store.data().interrupts.timeouts
    }

    pub(crate) fn take_events(&mut self) -> crate::SessionEvents {
        std::mem::take(&mut self.store.data_mut().events)
    }

    /// Terminate, shutdown checkpoint, then close (and sync) every file.
    pub(crate) fn shutdown(mut self) -> Result<(), Error> {
        let result = match &self.shutdown {
            Shutdown::Export(shutdown) => {
                let shutdown = shutdown.clone();
                self.exec(b"X\0\0\0\x04", crate::Interrupt::default())
                    .map(drop)
                    .map_err(|e| match e {
                        ExecError::Refused(e) | ExecError::Dead(e) => e,
                    })
                    .and_then(|()| shutdown.call(&mut self.store, ()).map_err(Error::guest))
            }
            Shutdown::SingleUser(stop) => {
                let stop = stop.clone();
                single::stop(&mut self.store, &stop)
            }
        };
        self.store.data_mut().vfs.close_all();
        result
    }
}
