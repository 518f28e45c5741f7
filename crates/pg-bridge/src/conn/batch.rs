//! The messages collected for the next exchange, and how to post-process its output.

use bytes::BytesMut;

use crate::filter::Plan;
use crate::protocol::frontend::{self as message, Part};

/// What the unnamed statement is after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unnamed {
    Unchanged,
    Mine,
    Dropped,
}

/// The messages collected for the next exchange.
pub(super) struct Batch {
    pub(super) frames: BytesMut,
    pub(super) plan: Plan,
    /// Closes and the like that must run before the client's messages.
    pub(super) prefix: BytesMut,
    /// The batch refers to the unnamed statement before parsing one of its own.
    pub(super) uses_unnamed: bool,
    pub(super) unnamed: Unnamed,
    /// The last message waits for results (`Sync`, `Query`, `FunctionCall`).
    pub(super) terminated: bool,
    /// The client sent `DISCARD ALL`.
    pub(super) discard_all: bool,
    /// Names of prepared statements the batch uses (the backend must hold them).
    pub(super) references: Vec<Vec<u8>>,
    /// Statements made again for the batch: by a simple query, and by `Parse` (in the order
    /// their answers come).
    pub(super) recreated: (Vec<Vec<u8>>, Vec<Vec<u8>>),
    /// Scratch for the `Parse` messages that make statements again.
    pub(super) prefix_parses: BytesMut,
}

impl Batch {
    pub(super) fn new() -> Batch {
        Batch {
            // Room for a typical Parse/Bind/Describe/Execute/Sync group without regrowing.
            frames: BytesMut::with_capacity(512),
            plan: Plan::default(),
            prefix: BytesMut::new(),
            uses_unnamed: false,
            unnamed: Unnamed::Unchanged,
            terminated: false,
            discard_all: false,
            references: Vec::new(),
            recreated: (Vec::new(), Vec::new()),
            prefix_parses: BytesMut::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.prefix.is_empty()
    }

    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.frames.extend_from_slice(bytes);
        self.terminated = false;
    }

    pub(super) fn put(&mut self, tag: u8, parts: &[Part<'_>]) {
        message::put(&mut self.frames, tag, parts);
        self.terminated = false;
    }

    /// Appends a client's frame `whole`, re-encoded from `parts` if `rewritten` (its
    /// text changed), else as it came.
    pub(super) fn forward(&mut self, whole: &[u8], rewritten: bool, tag: u8, parts: &[Part<'_>]) {
        if rewritten { self.put(tag, parts) } else { self.push(whole) }
    }
}
