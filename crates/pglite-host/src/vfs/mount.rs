//! The mount table and path resolution: where a guest path lands (a host path in a mount, an
//! in-memory file, a device). This is where confinement is enforced: a guest path must never
//! resolve outside its mount, so `..` is resolved lexically and every host directory on the way
//! is checked to stay beneath its mount root. Opening, reading and writing are not done here.

use std::fs;
use std::path::{Path, PathBuf};

use super::dev::{self, Device};
use super::{AT_FDCWD, Vfs};
use crate::errno::{Errno, SysResult};

/// One mount: a guest path prefix backed by a host directory (or a single host file).
#[derive(Clone, Debug)]
pub(crate) struct Mount {
    pub(crate) guest: String,
    pub(crate) host: PathBuf,
    pub(crate) read_only: bool,
    /// Further read-only directories overlaid on `host` (extension bundles): a path resolves to
    /// the first layer holding it, and directory listings merge all layers.
    pub(crate) overlays: Vec<PathBuf>,
}

impl Mount {
    pub(crate) fn new(guest: impl Into<String>, host: impl Into<PathBuf>, read_only: bool) -> Mount {
        Mount { guest: guest.into(), host: host.into(), read_only, overlays: Vec::new() }
    }

    fn covers(&self, guest: &str) -> bool {
        self.guest == "/"
            || (guest.starts_with(&self.guest) && matches!(guest.as_bytes().get(self.guest.len()), None | Some(b'/')))
    }
}

/// Where a guest path lands.
#[derive(Clone, Debug)]
pub(super) enum Node {
    Host { path: PathBuf, mount: usize },
    Memory(String),
    Device(Device),
    DevDir,
}

impl Vfs {
    /// The guest absolute path for `path` relative to `dirfd`.
    pub(crate) fn resolve(&self, dirfd: i32, path: &str) -> SysResult<String> {
        if path.is_empty() {
            return Err(Errno::NOENT);
        }
        if path.len() > 4096 {
            return Err(Errno::NAMETOOLONG);
        }
        if path.starts_with('/') {
            return Ok(normalize(path));
        }
        let base = if dirfd == AT_FDCWD { self.cwd.clone() } else { self.get(dirfd)?.borrow().guest_path.clone() };
        Ok(normalize(&format!("{base}/{path}")))
    }

    pub(super) fn node(&mut self, guest: &str) -> SysResult<Node> {
        if self.memory_prefixes.iter().any(|p| guest.starts_with(p.as_str())) {
            return Ok(Node::Memory(guest.to_owned()));
        }
        if let Some(node) = dev::node(guest) {
            return Ok(node);
        }
        let (idx, mount) = self.mounts.iter().enumerate().find(|(_, m)| m.covers(guest)).ok_or(Errno::NOENT)?;
        let rel = guest[mount.guest.len()..].trim_start_matches('/');
        let at = |root: &Path| if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
        let mut root = mount.host.clone();
        let mut path = at(&root);
        if !mount.overlays.is_empty()
            && fs::symlink_metadata(&path).is_err()
            && let Some(layer) = mount.overlays.iter().find(|layer| fs::symlink_metadata(at(layer)).is_ok())
        {
            root = layer.clone();
            path = at(layer);
        }
        if let Some(parent) = path.parent()
            && path != root
        {
            self.check_beneath(parent, &root)?;
        }
        Ok(Node::Host { path, mount: idx })
    }

    /// Refuses a host path whose directory escapes `root` through a symlink. Verified
    /// directories are remembered; renames and removals clear the memory.
    fn check_beneath(&mut self, dir: &Path, root: &Path) -> SysResult<()> {
        if self.verified_dirs.contains(dir) {
            return Ok(());
        }
        match (fs::canonicalize(dir), fs::canonicalize(root)) {
            (Ok(real), Ok(real_root)) => {
                if !real.starts_with(&real_root) {
                    tracing::warn!(dir = %dir.display(), "guest path escapes its mount; refused");
                    return Err(Errno::ACCES);
                }
                self.verified_dirs.insert(dir.to_path_buf());
                Ok(())
            }
            // A missing parent: the operation itself will report ENOENT.
            _ => Ok(()),
        }
    }

    /// The host path of `guest` and its mount's index; `write` refuses read-only mounts.
    pub(super) fn host_path(&mut self, guest: &str, write: bool) -> SysResult<(PathBuf, usize)> {
        match self.node(guest)? {
            Node::Host { path, mount } => {
                if write && self.mounts[mount].read_only {
                    return Err(Errno::ROFS);
                }
                Ok((path, mount))
            }
            Node::Device(_) | Node::DevDir | Node::Memory(_) => Err(if write { Errno::PERM } else { Errno::INVAL }),
        }
    }

    /// Every layer's directory for a guest directory in an overlaid mount (empty otherwise).
    pub(super) fn overlay_dirs(&self, guest: &str) -> Vec<PathBuf> {
        let Some(mount) = self.mounts.iter().find(|m| m.covers(guest)) else { return Vec::new() };
        if mount.overlays.is_empty() {
            return Vec::new();
        }
        let rel = guest[mount.guest.len()..].trim_start_matches('/');
        std::iter::once(&mount.host)
            .chain(&mount.overlays)
            .map(|layer| if rel.is_empty() { layer.clone() } else { layer.join(rel) })
            .filter(|dir| dir.is_dir())
            .collect()
    }
}

/// Lexical normalisation of a guest absolute path: `.` dropped, `..` pops (never above `/`).
pub(super) fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = String::with_capacity(path.len());
    for p in &parts {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}
