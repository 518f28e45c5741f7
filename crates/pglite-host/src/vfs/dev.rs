//! `/dev` and the standard streams: the devices the guest may open by name, the synthetic `/dev`
//! listing, and the sink that forwards the guest's stdout and stderr to `tracing`. No device
//! reaches a host device file: `/dev/random` is the host's RNG, everything else is a stub.

use super::mount::Node;

/// A device the guest can open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Device {
    Null,
    Random,
    Stdin,
    Stdout,
    Stderr,
}

/// The node for a guest path under `/dev` that names a device (or `/dev` itself); `None` for
/// every other path, which then resolves through the mounts.
pub(super) fn node(guest: &str) -> Option<Node> {
    let rest = guest.strip_prefix("/dev")?;
    match rest {
        "" => Some(Node::DevDir),
        "/null" | "/tty" | "/console" => Some(Node::Device(Device::Null)),
        "/urandom" | "/random" => Some(Node::Device(Device::Random)),
        "/stdin" => Some(Node::Device(Device::Stdin)),
        "/stdout" => Some(Node::Device(Device::Stdout)),
        "/stderr" => Some(Node::Device(Device::Stderr)),
        _ => None,
    }
}

/// The entries of the `/dev` listing (besides `.` and `..`): name and `d_type`.
pub(super) fn listing() -> impl Iterator<Item = (String, u8)> {
    ["null", "random", "urandom", "shm", "stdin", "stdout", "stderr", "tty"]
        .iter()
        .map(|n| (n.to_string(), if *n == "shm" { 4 } else { 2 }))
}

/// Output the guest writes to fd 1 and 2, forwarded to `tracing` a line at a time.
#[derive(Default)]
pub(crate) struct LogSink {
    line: Vec<u8>,
}

impl LogSink {
    pub(super) fn write(&mut self, stream: &str, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let text = String::from_utf8_lossy(&self.line);
                tracing::debug!(target: "pglite::guest", stream, "{text}");
                self.line.clear();
            } else if self.line.len() < 64 * 1024 {
                self.line.push(b);
            }
        }
    }
}
