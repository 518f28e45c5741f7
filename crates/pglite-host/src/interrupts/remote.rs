//! Interrupting the guest from another thread: a cancel request or a timer raises PostgreSQL's
//! pending-interrupt flags in the running instance's linear memory, as PostgreSQL's own signal
//! handler does, and the guest acts on them at its next `CHECK_FOR_INTERRUPTS()`.
//!
//! Only a running top-level statement is interrupted. The guest thread says when one starts and
//! ends, and when an exchange starts and ends, under the same lock the interrupting threads
//! take, so a flag is never raised for a statement or a client that is no longer running.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::{Interrupt, Reason};

/// The interrupt state other threads share with an instance's guest thread.
#[derive(Default)]
pub(crate) struct Remote {
    state: Mutex<State>,
    /// Wakes the timer thread: a deadline was set, or the instance went away.
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// The instance whose flags are raised, while one is attached.
    target: Option<Target>,
    /// Which attachment `target` is (see [`Remote::attach`]).
    attachment: u64,
    /// A top-level statement is running.
    running: bool,
    /// The running exchange's cancel flag and deadline (see [`Interrupt`]).
    cancel: Option<Arc<AtomicBool>>,
    exchange_deadline: Option<Instant>,
    /// When the running statement times out (`statement_timeout`).
    statement_deadline: Option<Instant>,
    /// What was delivered during this exchange, in order.
    delivered: Vec<Reason>,
    /// A timer thread is running.
    timer: bool,
}

/// Where an instance's flags are: guest addresses in a linear memory that does not move
/// (the engine is configured with `memory_may_move(false)`) and lives as long as the
/// attachment (the instance detaches before its store is dropped).
struct Target {
    base: *mut u8,
    /// Bytes of linear memory at attach time; memory only grows.
    len: usize,
    /// `InterruptPending` and `QueryCancelPending`.
    pending: u32,
    cancel_pending: u32,
    /// `MyLatch`, the variable holding the process latch's address.
    my_latch: Option<u32>,
}

// SAFETY: `base` points into a linear memory that stays mapped at the same address while the
// target is attached (see `Target`); it is only written through atomics under `Remote`'s lock.
#[expect(unsafe_code, reason = "the target's memory is reached from the interrupting thread")]
unsafe impl Send for Target {}

impl Target {
    /// The aligned 32-bit word at guest address `addr`, if it lies in the memory.
    fn word(&self, addr: u32) -> Option<&AtomicU32> {
        let at = addr as usize;
        if !at.is_multiple_of(4) || at.checked_add(4)? > self.len {
            return None;
        }
        // SAFETY: `at..at + 4` is inside the attached linear memory (checked above), which is
        // mapped and does not move while attached; the word is 4-byte aligned. The guest reads
        // these words with plain loads while this thread writes them atomically: the same
        // arrangement as wasmtime's own epoch counter, and what PostgreSQL's flags
        // (`volatile sig_atomic_t`, set from a signal handler) are made for.
        #[expect(unsafe_code, reason = "an atomic view of a flag word in guest memory")]
        Some(unsafe { AtomicU32::from_ptr(self.base.add(at).cast::<u32>()) })
    }

    /// What PostgreSQL's `StatementCancelHandler` does: both flags, then `SetLatch(MyLatch)`
    /// (`is_set` is the latch's first field; the process is its own owner, so there is no one
    /// to wake), which ends a wait such as `pg_sleep`'s.
    fn raise(&self) {
        let latch = self.my_latch.and_then(|var| self.word(var)).map(|w| w.load(Ordering::SeqCst)).filter(|&l| l != 0);
        for addr in [Some(self.cancel_pending), Some(self.pending), latch].into_iter().flatten() {
            if let Some(word) = self.word(addr) {
                word.store(1, Ordering::SeqCst);
            }
        }
    }
}

impl State {
    /// Delivers a raised cancel flag, else a passed deadline, if a statement is running.
    fn poll(&mut self) {
        let Some(target) = self.target.as_ref().filter(|_| self.running) else {
            return;
        };
        let due = |deadline: Option<Instant>| deadline.is_some_and(|deadline| Instant::now() >= deadline);
        let reason = if self.cancel.as_ref().is_some_and(|flag| flag.swap(false, Ordering::SeqCst)) {
            Reason::User
        } else if due(self.exchange_deadline) {
            self.exchange_deadline = None;
            Reason::Deadline
        } else if due(self.statement_deadline) {
            self.statement_deadline = None;
            Reason::StatementTimeout
        } else {
            return;
        };
        tracing::trace!(?reason, "interrupt delivered");
        target.raise();
        self.delivered.push(reason);
    }

    /// The next deadline to deliver, while a statement runs.
    fn next_deadline(&self) -> Option<Instant> {
        if !self.running || self.target.is_none() {
            return None;
        }
        match (self.exchange_deadline, self.statement_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Remote {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Attaches an instance's flags (guest addresses) in the memory at `base`, `len` bytes
    /// long. Returns the attachment, for [`detach`](Self::detach).
    ///
    /// The caller promises that the memory does not move and stays mapped until it detaches.
    pub(crate) fn attach(&self, base: *mut u8, len: usize, flags: (u32, u32), my_latch: Option<u32>) -> u64 {
        let mut state = self.lock();
        state.attachment += 1;
        state.target = Some(Target { base, len, pending: flags.0, cancel_pending: flags.1, my_latch });
        state.attachment
    }

    /// Forgets the flags of `attachment` (if it is still the one attached); nothing is raised
    /// in that memory afterwards.
    pub(crate) fn detach(&self, attachment: u64) {
        let mut state = self.lock();
        if state.attachment == attachment && state.target.take().is_some() {
            state.running = false;
            self.wake.notify_all();
        }
    }

    /// An exchange starts that `interrupt` may interrupt (its deadline is delivered while a
    /// statement runs).
    pub(crate) fn begin_exchange(&self, interrupt: Interrupt) {
        let mut state = self.lock();
        state.cancel = interrupt.cancel;
        state.exchange_deadline = interrupt.deadline;
        state.delivered.clear();
    }

    /// The exchange ended: nothing more is delivered to it. Returns what was delivered.
    pub(crate) fn end_exchange(&self) -> Vec<Reason> {
        let mut state = self.lock();
        state.running = false;
        state.cancel = None;
        state.exchange_deadline = None;
        state.statement_deadline = None;
        std::mem::take(&mut state.delivered)
    }

    /// A top-level statement starts, timing out at `deadline`: delivers a cancel raised
    /// before it or a deadline already passed.
    pub(crate) fn statement_start(self: &Arc<Self>, deadline: Option<Instant>) {
        let mut state = self.lock();
        state.running = true;
        state.statement_deadline = deadline;
        state.poll();
        // The timer sleeps while no statement runs: wake it for this one's deadlines (its own,
        // or the exchange's).
        if state.next_deadline().is_some() {
            self.ensure_timer(&mut state);
        }
    }

    /// The top-level statement ended.
    pub(crate) fn statement_end(&self) {
        let mut state = self.lock();
        state.running = false;
        state.statement_deadline = None;
    }

    /// A cancel flag was raised: delivers it now if its exchange's statement is running.
    pub(crate) fn interrupt(&self) {
        self.lock().poll();
    }

    /// Makes sure the timer thread runs and sees the deadline just set.
    fn ensure_timer(self: &Arc<Self>, state: &mut State) {
        if state.timer {
            self.wake.notify_all();
            return;
        }
        let remote = self.clone();
        match std::thread::Builder::new().name("pglite-timer".into()).spawn(move || remote.run_timer()) {
            Ok(_) => state.timer = true,
            Err(err) => tracing::warn!(%err, "no thread for timeouts; they will not fire"),
        }
    }

    /// Delivers deadlines as they pass; ends when the instance detaches.
    fn run_timer(&self) {
        let mut state = self.lock();
        while state.target.is_some() {
            match state.next_deadline() {
                None => state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        state.poll();
                    } else {
                        state = self.wake.wait_timeout(state, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
                    }
                }
            }
        }
        state.timer = false;
    }
}
