//! Backend output on its way to one client: notifications are taken out (the bridge delivers
//! them to every client listening), responses to messages the bridge prepended are dropped, `CommandComplete` tags of
//! statements the bridge rewrote are restored, and errors and notices name the client's
//! prepared statements and portals as the client named them. Sans I/O; the `Plan` says what to
//! do.

use bytes::BytesMut;

use crate::Error;
use crate::protocol::backend::{Replies, TxStatus, fields, parameter_status, ready_status};
use crate::protocol::frame::frames;

/// How to post-process the output of one exchange for its client.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Responses to messages the bridge prepended (`ParseComplete`, `BindComplete`,
    /// `CloseComplete`) that the client must not see.
    pub(crate) drop_leading: usize,
    /// For a simple query: `CommandComplete` tags to replace, by statement index.
    pub(crate) tags: Vec<(usize, String)>,
    /// The batch's error is one the bridge raised itself: it carries no context.
    pub(crate) raised: bool,
    /// Output up to and including this many `ReadyForQuery` answers queries the bridge
    /// prepended, which the client must not see.
    pub(crate) skip_ready: usize,
    /// The client runs a COPY with the backend: its `CopyInResponse` goes to the client
    /// (otherwise the COPY was aborted by the backend, whose error follows).
    pub(crate) copy: bool,
    /// The index of the statement the next `CommandComplete` answers (for `tags`).
    pub(crate) statement: usize,
}

impl Filtered {
    /// Takes in what filtering the output that followed `self`'s gave.
    pub(crate) fn then(mut self, later: Filtered) -> Filtered {
        self.out.unsplit(later.out);
        self.ready = later.ready.or(self.ready);
        self.parameters.extend(later.parameters);
        self.notifications.extend(later.notifications);
        self.dropped += later.dropped;
        self.skipped_error |= later.skipped_error;
        self
    }
}

/// The result of filtering one exchange's output.
#[derive(Debug, Default)]
pub(crate) struct Filtered {
    /// Bytes for the client.
    pub(crate) out: BytesMut,
    /// The status of the last `ReadyForQuery`, if any.
    pub(crate) ready: Option<TxStatus>,
    /// `ParameterStatus` changes seen, for the client's own bookkeeping.
    pub(crate) parameters: Vec<(String, String)>,
    /// Notifications the batch's commits sent (channel, payload), in order.
    pub(crate) notifications: Vec<(String, String)>,
    /// How many responses to prepended messages were dropped (they succeeded).
    pub(crate) dropped: usize,
    /// The output skipped for prepended queries held an error.
    pub(crate) skipped_error: bool,
}

/// Filters backend output for a client according to `plan`, which keeps how far it got: the
/// output of one exchange may be filtered in pieces of whole messages, in order.
pub(crate) fn filter(output: BytesMut, plan: &mut Plan) -> Result<Filtered, Error> {
    if plan.drop_leading == 0 && plan.tags.is_empty() && plan.skip_ready == 0 {
        // Usually nothing is to be removed or replaced: the output goes out as it is.
        let mut res = Filtered::default();
        let mut clean = true;
        for item in frames(&output) {
            let (tag, bytes) = item.map_err(|e| Error::Upstream { reason: format!("backend output: {e}") })?;
            match tag {
                b'A' | b'K' | b'W' => {
                    clean = false;
                    break;
                }
                b'G' if !plan.copy => {
                    clean = false;
                    break;
                }
                b'E' | b'N' if plan.raised => {
                    clean = false;
                    break;
                }
                b'S' => {
                    if let Some(parameter) = parameter_status(bytes) {
                        res.parameters.push(parameter);
                    }
                }
                b'Z' => res.ready = ready_status(bytes),
                _ => {}
            }
        }
        if clean {
            res.out = output;
            return Ok(res);
        }
    }
    filter_copy(&output, plan)
}

/// The channel and payload of a `NotificationResponse` frame.
fn notification(frame: &[u8]) -> Option<(String, String)> {
    let body = frame.get(5 + 4..)?;
    let mut parts = body.split(|&b| b == 0);
    let channel = String::from_utf8_lossy(parts.next()?).into_owned();
    let payload = String::from_utf8_lossy(parts.next()?).into_owned();
    Some((channel, payload))
}

/// An error or notice frame the bridge raised itself, without the context of how it raised it.
fn without_context(frame: &[u8]) -> BytesMut {
    let mut body = Vec::with_capacity(frame.len());
    for (code, value) in fields(frame) {
        if code == b'W' {
            continue;
        }
        body.push(code);
        body.extend_from_slice(value);
        body.push(0);
    }
    body.push(0);
    let mut res = BytesMut::with_capacity(body.len() + 5);
    res.extend_from_slice(&[frame[0]]);
    res.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    res.extend_from_slice(&body);
    res
}

/// `filter` for output from which something is removed or replaced.
fn filter_copy(output: &[u8], plan: &mut Plan) -> Result<Filtered, Error> {
    let mut res = Filtered { out: BytesMut::with_capacity(output.len()), ..Filtered::default() };
    for item in frames(output) {
        let (tag, bytes) = item.map_err(|e| Error::Upstream { reason: format!("backend output: {e}") })?;
        if plan.skip_ready > 0 {
            plan.skip_ready -= usize::from(tag == b'Z');
            res.skipped_error |= tag == b'E';
            continue;
        }
        if plan.drop_leading > 0 {
            if matches!(tag, b'1' | b'2' | b'3') {
                plan.drop_leading -= 1;
                res.dropped += 1;
                continue;
            }
            plan.drop_leading = 0;
        }
        match tag {
            // Notifications go to the clients listening, through the bridge; the backend key is
            // the bridge's business.
            b'A' => res.notifications.extend(notification(bytes)),
            b'K' => {}
            b'G' if plan.copy => res.out.extend_from_slice(bytes),
            // A COPY IN / BOTH the bridge did not run with the client was already aborted by
            // the backend; its error follows.
            b'G' | b'W' => {}
            b'S' => {
                if let Some(parameter) = parameter_status(bytes) {
                    res.parameters.push(parameter);
                }
                res.out.extend_from_slice(bytes);
            }
            b'C' | b'I' => {
                match plan.tags.iter().find(|(idx, _)| *idx == plan.statement) {
                    Some((_, new_tag)) if tag == b'C' => {
                        let mut replies = Replies::new();
                        replies.command_complete(new_tag)?;
                        res.out.extend_from_slice(&replies.into_bytes());
                    }
                    _ => res.out.extend_from_slice(bytes),
                }
                plan.statement += 1;
            }
            b'Z' => {
                res.ready = ready_status(bytes);
                plan.statement = 0;
                res.out.extend_from_slice(bytes);
            }
            b'E' | b'N' if plan.raised => res.out.extend_from_slice(&without_context(bytes)),
            _ => res.out.extend_from_slice(bytes),
        }
    }
    Ok(res)
}
