//! flock. The program is the only process and nothing else opens its files, so an advisory lock is always granted
//! (locks between two descriptors of one file within the program are not tracked).

use super::Args;
use crate::errno::{Errno, SysResult};
use crate::file;

const LOCK_SH: u64 = 1;
const LOCK_EX: u64 = 2;
const LOCK_NB: u64 = 4;
const LOCK_UN: u64 = 8;

pub fn flock(a: &Args) -> SysResult {
    file::get(a[0])?;
    match a[1] & !LOCK_NB {
        LOCK_SH | LOCK_EX | LOCK_UN => Ok(0),
        _ => Err(Errno::EINVAL),
    }
}
