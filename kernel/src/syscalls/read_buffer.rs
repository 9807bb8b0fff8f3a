//! How big a buffer a stream read (a connection, a Unix stream socket, a pipe) copies through.

/// The buffer of a stream read that finds nothing queued yet: under the heap's large blocks (`heap::large`).
const WAITING_READ: usize = 16 << 10;

/// Bytes of the buffer a stream read copies through, for `asked` bytes when `queued` are there and a waiting read
/// waits for `low_water` of them. A read gets a buffer the size of what is queued, or, with nothing queued, one the
/// heap's small blocks hold, rather than the whole of what was asked: a block of 32 KiB or more is fresh pages,
/// whose first touch costs a shadow-paging fault (~40 us on `kvm_pvm`) and whose return costs a `Discard`; an epoll
/// server's 64 KiB `read` of a 100-byte request paid both on every request. The read may then return less than a
/// larger buffer would have taken, as any stream read may. Datagrams must fit whole: not for them.
pub fn stream_read_len(asked: usize, queued: usize, low_water: usize) -> usize {
    match queued {
        0 => asked.min(WAITING_READ.max(low_water)),
        queued => asked.min(queued.max(low_water)),
    }
}
