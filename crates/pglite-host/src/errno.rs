//! Error numbers as the guest sees them: Emscripten uses the WASI numbering for both
//! `__syscall_*` (returned negated) and `wasi_snapshot_preview1` (returned as is).

use std::io;

/// A guest error number (WASI numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Errno(pub(crate) i32);

impl Errno {
    pub(crate) const ACCES: Errno = Errno(2);
    pub(crate) const AGAIN: Errno = Errno(6);
    pub(crate) const BADF: Errno = Errno(8);
    pub(crate) const EXIST: Errno = Errno(20);
    pub(crate) const FAULT: Errno = Errno(21);
    pub(crate) const FBIG: Errno = Errno(22);
    pub(crate) const INVAL: Errno = Errno(28);
    pub(crate) const IO: Errno = Errno(29);
    pub(crate) const ISDIR: Errno = Errno(31);
    pub(crate) const LOOP: Errno = Errno(32);
    pub(crate) const MFILE: Errno = Errno(33);
    pub(crate) const MLINK: Errno = Errno(34);
    pub(crate) const NAMETOOLONG: Errno = Errno(37);
    pub(crate) const NOENT: Errno = Errno(44);
    pub(crate) const NOMEM: Errno = Errno(48);
    pub(crate) const NOSPC: Errno = Errno(51);
    pub(crate) const NOSYS: Errno = Errno(52);
    pub(crate) const NOTDIR: Errno = Errno(54);
    pub(crate) const NOTEMPTY: Errno = Errno(55);
    pub(crate) const NOTTY: Errno = Errno(59);
    pub(crate) const PERM: Errno = Errno(63);
    pub(crate) const RANGE: Errno = Errno(68);
    pub(crate) const ROFS: Errno = Errno(69);
    pub(crate) const SPIPE: Errno = Errno(70);
    pub(crate) const XDEV: Errno = Errno(75);

    /// The `__syscall_*` return value for this error.
    pub(crate) fn neg(self) -> i32 {
        -self.0
    }
}

impl From<io::Error> for Errno {
    fn from(err: io::Error) -> Errno {
        use io::ErrorKind as K;
        match err.kind() {
            K::NotFound => Errno::NOENT,
            K::AlreadyExists => Errno::EXIST,
            K::PermissionDenied => Errno::ACCES,
            K::NotADirectory => Errno::NOTDIR,
            K::IsADirectory => Errno::ISDIR,
            K::DirectoryNotEmpty => Errno::NOTEMPTY,
            K::StorageFull | K::QuotaExceeded => Errno::NOSPC,
            K::FileTooLarge => Errno::FBIG,
            K::ReadOnlyFilesystem => Errno::ROFS,
            K::CrossesDevices => Errno::XDEV,
            K::InvalidFilename => Errno::NAMETOOLONG,
            _ if err.raw_os_error() == Some(40) => Errno::LOOP,
            K::WouldBlock => Errno::AGAIN,
            K::InvalidInput => Errno::INVAL,
            K::TooManyLinks => Errno::MLINK,
            K::OutOfMemory => Errno::NOMEM,
            K::NotSeekable => Errno::SPIPE,
            _ => Errno::IO,
        }
    }
}

/// Result of a host implementation of a guest call.
pub(crate) type SysResult<T> = Result<T, Errno>;
