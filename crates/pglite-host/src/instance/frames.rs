//! Reading the frontend protocol's framing just far enough to cut a request into the calls
//! each release's entry point can take whole, and to look at the types of the replies. Frames
//! are never decoded or changed here: bytes that do not frame stay where they are, for
//! PostgreSQL to reject.

/// A `Flush` message.
pub(super) const FLUSH: &[u8] = b"H\0\0\0\x04";

/// Length of a `ReadyForQuery` message.
pub(super) const READY_FOR_QUERY_LEN: usize = 6;

/// Length of the first frame of `bytes`, if it holds a complete one.
pub(crate) fn frame_len(bytes: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes(bytes.get(1..5)?.try_into().ok()?) as usize;
    let total = len.checked_add(1)?;
    (len >= 4 && total <= bytes.len()).then_some(total)
}

/// Types of the complete frames at the start of `bytes`.
pub(super) fn first_frame_types(mut bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    std::iter::from_fn(move || {
        let len = frame_len(bytes)?;
        let ty = bytes[0];
        bytes = &bytes[len..];
        Some(ty)
    })
}

/// The type and length of the last complete frame of `bytes`, if they hold whole frames.
pub(super) fn last_frame(mut bytes: &[u8]) -> Option<(u8, usize)> {
    let mut last = None;
    while let Some(len) = frame_len(bytes) {
        last = Some((bytes[0], len));
        bytes = &bytes[len..];
    }
    last
}

/// Whether a group's last message is one PostgreSQL answers with ReadyForQuery.
pub(super) fn ends_unit_of_work(group: &[u8]) -> bool {
    last_frame(group).is_some_and(|(ty, _)| matches!(ty, b'S' | b'Q' | b'F'))
}

/// Splits a request after each message for which `split` holds. Unframeable bytes stay in
/// the last group, for PostgreSQL to reject.
fn groups(request: &[u8], split: impl Fn(u8) -> bool) -> Vec<&[u8]> {
    let mut groups = Vec::new();
    let (mut start, mut at) = (0, 0);
    while let Some(len) = frame_len(&request[at..]) {
        let ty = request[at];
        at += len;
        if split(ty) {
            groups.push(&request[start..at]);
            start = at;
        }
    }
    if start < request.len() {
        groups.push(&request[start..]);
    }
    groups
}

/// Splits a request after each message that ends a unit of work (Sync, Query, FunctionCall,
/// Terminate).
pub(super) fn work_units(request: &[u8]) -> Vec<&[u8]> {
    groups(request, |ty| matches!(ty, b'S' | b'Q' | b'F' | b'X'))
}

/// Splits a request after each Query, FunctionCall and Terminate.
pub(super) fn query_units(request: &[u8]) -> Vec<&[u8]> {
    groups(request, |ty| matches!(ty, b'Q' | b'F' | b'X'))
}

/// Removes the debugging notices PGlite's build adds to PostgreSQL's output, which a client of
/// PostgreSQL never sees: `WARNING:  # 1743: aborting transaction <xid>`, sent by
/// `RecordTransactionAbort` whenever a transaction that wrote is rolled back.
pub(crate) fn drop_debug_notices(reply: &mut Vec<u8>) {
    const ROUTINE: &[u8] = b"RRecordTransactionAbort\0";
    // Every reply is searched: the searcher is built once, not per call.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(ROUTINE));
    if FINDER.find(reply).is_none() {
        return;
    }
    let mut kept = Vec::with_capacity(reply.len());
    let mut rest = &reply[..];
    while let Some(len) = frame_len(rest) {
        let frame = &rest[..len];
        let debug = frame[0] == b'N' && FINDER.find(frame).is_some() && {
            let body = &frame[5..];
            body.split(|&b| b == 0).any(|field| {
                field.starts_with(b"M# ") && memchr::memmem::find(field, b": aborting transaction ").is_some()
            })
        };
        if !debug {
            kept.extend_from_slice(frame);
        }
        rest = &rest[len..];
    }
    kept.extend_from_slice(rest);
    *reply = kept;
}
