//! Linux error numbers, as syscalls return them (negated in %rax).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i64);

impl Errno {
    pub const EPERM: Errno = Errno(1);
    pub const ENOENT: Errno = Errno(2);
    pub const EEXIST: Errno = Errno(17);
    pub const ESRCH: Errno = Errno(3);
    pub const EBADF: Errno = Errno(9);
    pub const EAGAIN: Errno = Errno(11);
    pub const ENOMEM: Errno = Errno(12);
    pub const EFAULT: Errno = Errno(14);
    pub const ENODEV: Errno = Errno(19);
    pub const EINVAL: Errno = Errno(22);
    pub const ENOTTY: Errno = Errno(25);
    pub const EPIPE: Errno = Errno(32);
    pub const ESPIPE: Errno = Errno(29);
    pub const EMFILE: Errno = Errno(24);
    pub const ENOSYS: Errno = Errno(38);
    pub const ENAMETOOLONG: Errno = Errno(36);
    pub const ETIMEDOUT: Errno = Errno(110);
}

pub type SysResult = Result<u64, Errno>;
