//! Unit tests for path normalisation and mount confinement.

use std::fs;
use std::path::Path;

use super::fd::Kind;
use super::mount::normalize;
use super::{AT_FDCWD, Mount, Vfs, oflags};
use crate::errno::Errno;

fn vfs(root: &Path, data: &Path) -> Vfs {
    Vfs::new(
        vec![
            Mount::new("/", root, false),
            Mount::new("/tmp/pglite/base", data, false),
            Mount::new("/tmp/pglite/share", root.join("share"), true),
        ],
        true,
    )
}

#[test]
fn normalize_never_climbs_above_root() {
    assert_eq!(normalize("/a/b/../c/./d"), "/a/c/d");
    assert_eq!(normalize("/../../etc/passwd"), "/etc/passwd");
    assert_eq!(normalize("/"), "/");
    assert_eq!(normalize("//x//"), "/x");
}

#[test]
fn relative_paths_resolve_against_cwd_and_dirfd() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut v = vfs(root.path(), data.path());
    v.chdir("/tmp/pglite/base".into()).unwrap();
    assert_eq!(v.resolve(AT_FDCWD, "global/pg_control").unwrap(), "/tmp/pglite/base/global/pg_control");
    assert_eq!(v.resolve(AT_FDCWD, "../../../../x").unwrap(), "/x");
}

#[test]
fn files_land_in_their_mount_and_dotdot_cannot_escape() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut v = vfs(root.path(), data.path());
    let fd = v.open("/tmp/pglite/base/PG_VERSION".into(), oflags::CREAT | oflags::WRONLY, 0o600).unwrap();
    v.write(fd, b"16\n", None).unwrap();
    v.close(fd).unwrap();
    assert_eq!(fs::read(data.path().join("PG_VERSION")).unwrap(), b"16\n");
    let escaped = v.resolve(AT_FDCWD, "/tmp/pglite/base/../../../../etc/passwd").unwrap();
    assert_eq!(escaped, "/etc/passwd");
    assert!(v.stat_path(&escaped, true).is_err(), "host /etc/passwd must not be visible");
}

#[test]
fn host_symlink_out_of_a_mount_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"x").unwrap();
    std::os::unix::fs::symlink(outside.path(), data.path().join("link")).unwrap();
    let mut v = vfs(root.path(), data.path());
    assert_eq!(v.open("/tmp/pglite/base/link/secret".into(), 0, 0).unwrap_err(), Errno::ACCES);
}

#[test]
fn read_only_mount_refuses_writes() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    fs::create_dir(root.path().join("share")).unwrap();
    fs::write(root.path().join("share/f"), b"x").unwrap();
    let mut v = vfs(root.path(), data.path());
    assert_eq!(v.open("/tmp/pglite/share/f".into(), oflags::RDWR, 0).unwrap_err(), Errno::ROFS);
    assert!(v.open("/tmp/pglite/share/f".into(), 0, 0).is_ok());
    assert_eq!(v.mkdir("/tmp/pglite/share/d").unwrap_err(), Errno::ROFS);
}

#[test]
fn dup_shares_the_offset_and_pipes_are_nonblocking() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut v = vfs(root.path(), data.path());
    let fd = v.open("/f".into(), oflags::CREAT | oflags::RDWR, 0o600).unwrap();
    let fd2 = v.dup(fd, 0).unwrap();
    v.write(fd, b"abc", None).unwrap();
    v.write(fd2, b"def", None).unwrap();
    assert_eq!(fs::read(root.path().join("f")).unwrap(), b"abcdef");
    let (r, w) = v.pipe().unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(v.read(r, &mut buf, None).unwrap_err(), Errno::AGAIN);
    v.write(w, b"x", None).unwrap();
    assert_eq!(v.read(r, &mut buf, None).unwrap(), 1);
}

#[test]
fn memory_files_never_touch_the_disk() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut v = vfs(root.path(), data.path());
    v.keep_in_memory("/tmp/pglite/base/.s.PGSQL.");
    let probe = "/tmp/pglite/base/.s.PGSQL.5432.in";
    assert_eq!(v.open(probe.into(), 0, 0).unwrap_err(), Errno::NOENT);
    let fd = v
        .open("/tmp/pglite/base/.s.PGSQL.5432.lock.out".into(), oflags::CREAT | oflags::WRONLY | oflags::TRUNC, 0o600)
        .unwrap();
    v.write(fd, b"reply", None).unwrap();
    v.close(fd).unwrap();
    assert_eq!(v.stat_path("/tmp/pglite/base/.s.PGSQL.5432.lock.out", true).unwrap().size, 5);
    v.rename("/tmp/pglite/base/.s.PGSQL.5432.lock.out", "/tmp/pglite/base/.s.PGSQL.5432.out").unwrap();
    let fd = v.open("/tmp/pglite/base/.s.PGSQL.5432.out".into(), 0, 0).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(v.read(fd, &mut buf, None).unwrap(), 5);
    assert_eq!(&buf[..5], b"reply");
    v.unlink("/tmp/pglite/base/.s.PGSQL.5432.out", false).unwrap();
    assert_eq!(fs::read_dir(data.path()).unwrap().count(), 0, "nothing reached the data directory");
}

#[test]
fn overlays_resolve_in_order_and_list_merged() {
    let root = tempfile::tempdir().unwrap();
    let pkg = tempfile::tempdir().unwrap();
    let ext = tempfile::tempdir().unwrap();
    fs::create_dir_all(pkg.path().join("extension")).unwrap();
    fs::create_dir_all(ext.path().join("extension")).unwrap();
    fs::write(pkg.path().join("extension/plpgsql.control"), b"core").unwrap();
    fs::write(ext.path().join("extension/pgcrypto.control"), b"ext").unwrap();
    let mut share = Mount::new("/tmp/pglite/share", pkg.path(), true);
    share.overlays.push(ext.path().to_path_buf());
    let mut v = Vfs::new(vec![Mount::new("/", root.path(), false), share], true);
    let fd = v.open("/tmp/pglite/share/extension/pgcrypto.control".into(), 0, 0).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(v.read(fd, &mut buf, None).unwrap(), 3);
    assert_eq!(&buf[..3], b"ext");
    assert!(v.stat_path("/tmp/pglite/share/extension/plpgsql.control", true).is_ok());
    let dir = v.open("/tmp/pglite/share/extension".into(), oflags::DIRECTORY, 0).unwrap();
    let names: Vec<String> = v.dirents(dir, 100).unwrap().into_iter().map(|e| e.3).collect();
    assert_eq!(names, [".", "..", "pgcrypto.control", "plpgsql.control"]);
    assert_eq!(
        v.open("/tmp/pglite/share/extension/x".into(), oflags::CREAT | oflags::WRONLY, 0o600).unwrap_err(),
        Errno::ROFS
    );
}

#[test]
fn synchronous_opens_stay_synchronous_on_the_host() {
    let root = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut v = vfs(root.path(), data.path());
    let fd = v.open("/tmp/pglite/base/wal".into(), oflags::CREAT | oflags::RDWR | oflags::DSYNC, 0o600).unwrap();
    let desc = v.get(fd).unwrap().borrow();
    let Kind::File(file) = &desc.kind else { panic!("a file") };
    let flags = rustix::fs::fcntl_getfl(file).unwrap();
    assert!(flags.contains(rustix::fs::OFlags::DSYNC), "{flags:?}");
    drop(desc);
    // Without durability (building a template, synced once at the end) the flag is dropped.
    let mut fast = Vfs::new(vec![Mount::new("/", root.path(), false)], false);
    let fd = fast.open("/wal2".into(), oflags::CREAT | oflags::RDWR | oflags::DSYNC, 0o600).unwrap();
    let desc = fast.get(fd).unwrap().borrow();
    let Kind::File(file) = &desc.kind else { panic!("a file") };
    assert!(!rustix::fs::fcntl_getfl(file).unwrap().contains(rustix::fs::OFlags::DSYNC));
}
