//! Backend output on its way to one client: notifications and COPY frames never pass,
//! responses to messages the bridge prepended are dropped, and `CommandComplete` tags of
//! statements the bridge rewrote are restored. Sans I/O; the `Plan` says what to do.

use bytes::BytesMut;

use crate::Error;
use crate::protocol::backend::{Replies, Severity, TxStatus, parameter_status, ready_status};
use crate::protocol::frame::frames;

/// How to post-process the output of one exchange for its client.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Responses to messages the bridge prepended (`ParseComplete`, `BindComplete`,
    /// `CloseComplete`) that the client must not see.
    pub(crate) drop_leading: usize,
    /// For a simple query: `CommandComplete` tags to replace, by statement index.
    pub(crate) tags: Vec<(usize, String)>,
}

/// The result of filtering one exchange's output.
#[derive(Debug)]
pub(crate) struct Filtered {
    /// Bytes for the client.
    pub(crate) out: BytesMut,
    /// The status of the last `ReadyForQuery`, if any.
    pub(crate) ready: Option<TxStatus>,
    /// `ParameterStatus` changes seen, for the client's own bookkeeping.
    pub(crate) parameters: Vec<(String, String)>,
}

/// Filters backend output for a client according to `plan`.
pub(crate) fn filter(output: BytesMut, plan: &Plan) -> Result<Filtered, Error> {
    if plan.drop_leading == 0 && plan.tags.is_empty() {
        // Usually nothing is to be removed or replaced: the output goes out as it is.
        let mut res = Filtered { out: BytesMut::new(), ready: None, parameters: Vec::new() };
        let mut clean = true;
        for item in frames(&output) {
            let (tag, bytes) = item.map_err(|e| Error::Upstream { reason: format!("backend output: {e}") })?;
            match tag {
                b'A' | b'K' | b'G' | b'W' | b'H' => {
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

/// `filter` for output from which something is removed or replaced.
fn filter_copy(output: &[u8], plan: &Plan) -> Result<Filtered, Error> {
    let mut res = Filtered { out: BytesMut::with_capacity(output.len()), ready: None, parameters: Vec::new() };
    let mut to_drop = plan.drop_leading;
    let mut statement_idx = 0usize;
    let mut in_copy_out = false;
    for item in frames(output) {
        let (tag, bytes) = item.map_err(|e| Error::Upstream { reason: format!("backend output: {e}") })?;
        if to_drop > 0 {
            if matches!(tag, b'1' | b'2' | b'3') {
                to_drop -= 1;
                continue;
            }
            to_drop = 0;
        }
        match tag {
            // Notifications belong to nobody here; the backend key is the bridge's business.
            b'A' | b'K' => {}
            // COPY IN / BOTH was already aborted by the backend; its error follows.
            b'G' | b'W' => {}
            b'H' => in_copy_out = true,
            b'd' | b'c' if in_copy_out => {}
            b'C' if in_copy_out => {
                in_copy_out = false;
                statement_idx += 1;
                let mut replies = Replies::new();
                replies.error(Severity::Error, "0A000", "COPY is not supported by this server")?;
                res.out.extend_from_slice(&replies.into_bytes());
            }
            b'S' => {
                if let Some(parameter) = parameter_status(bytes) {
                    res.parameters.push(parameter);
                }
                res.out.extend_from_slice(bytes);
            }
            b'C' | b'I' => {
                match plan.tags.iter().find(|(idx, _)| *idx == statement_idx) {
                    Some((_, new_tag)) if tag == b'C' => {
                        let mut replies = Replies::new();
                        replies.command_complete(new_tag)?;
                        res.out.extend_from_slice(&replies.into_bytes());
                    }
                    _ => res.out.extend_from_slice(bytes),
                }
                statement_idx += 1;
            }
            b'Z' => {
                res.ready = ready_status(bytes);
                statement_idx = 0;
                res.out.extend_from_slice(bytes);
            }
            _ => res.out.extend_from_slice(bytes),
        }
    }
    Ok(res)
}
