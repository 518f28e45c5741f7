//! Directory listings (`getdents64`): the records of an open directory, read once per rewind.
//! An overlaid mount's directory lists the union of its layers (first layer wins a name); `/dev`
//! lists its devices. Records are handed to the import as values; the guest layout is not
//! written here.

use std::collections::BTreeMap;
use std::fs;

use super::fd::Kind;
use super::{DIRENT_SIZE, Vfs, dev};
use crate::errno::{Errno, SysResult};

impl Vfs {
    /// Directory records from the descriptor's position: `(d_ino, d_off, type, name)`.
    pub(crate) fn dirents(&mut self, fd: i32, max: usize) -> SysResult<Vec<(u64, u64, u8, String)>> {
        let mut desc = self.get(fd)?.borrow_mut();
        let start = (desc.pos / DIRENT_SIZE) as usize;
        let Kind::Dir { host, entries, overlays, .. } = &mut desc.kind else {
            return Err(Errno::NOTDIR);
        };
        if entries.is_none() {
            let mut list = vec![(".".to_owned(), 4u8), ("..".to_owned(), 4u8)];
            match host {
                Some(host) => {
                    let mut names = BTreeMap::new();
                    let layers = if overlays.is_empty() { std::slice::from_ref(&*host) } else { overlays.as_slice() };
                    for layer in layers {
                        for entry in fs::read_dir(layer)? {
                            let entry = entry?;
                            let ft = entry.file_type()?;
                            let t = if ft.is_dir() {
                                4
                            } else if ft.is_symlink() {
                                10
                            } else {
                                8
                            };
                            names.entry(entry.file_name().to_string_lossy().into_owned()).or_insert(t);
                        }
                    }
                    list.extend(names);
                }
                None => list.extend(dev::listing()),
            }
            *entries = Some(list);
        }
        let list = entries.as_ref().map(Vec::as_slice).unwrap_or_default();
        let out: Vec<_> = list
            .iter()
            .enumerate()
            .skip(start)
            .take(max)
            .map(|(i, (name, t))| (i as u64 + 1, (i as u64 + 1) * DIRENT_SIZE, *t, name.clone()))
            .collect();
        desc.pos = (start + out.len()) as u64 * DIRENT_SIZE;
        Ok(out)
    }
}
