//! What the tree shows of the running program and the network's names: `/proc/self/stat`, `/proc/self/task` (a
//! directory per live thread, by id, holding its `comm` and `stat`), `/proc/self/fd` (a link per open descriptor),
//! and the contents of `/etc/services` and `/etc/protocols`, the short standard tables that `getservbyname`,
//! `getprotobyname` and Go's `net` package read (IANA's numbers for the common names).

use super::{Data, EntryType, Inode, Kind};
use crate::errno::Errno;
use crate::sched::{self, ThreadFacts};
use crate::syscalls::{PID, PPID};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;

pub const SERVICES: &str = "\
# Network services (a short table; the names programs commonly look up).
echo\t\t7/tcp
echo\t\t7/udp
discard\t\t9/tcp\t\tsink null
discard\t\t9/udp\t\tsink null
daytime\t\t13/tcp
daytime\t\t13/udp
ftp-data\t20/tcp
ftp\t\t21/tcp
ssh\t\t22/tcp
telnet\t\t23/tcp
smtp\t\t25/tcp\t\tmail
time\t\t37/tcp\t\ttimserver
time\t\t37/udp\t\ttimserver
domain\t\t53/tcp
domain\t\t53/udp
bootps\t\t67/udp
bootpc\t\t68/udp
tftp\t\t69/udp
gopher\t\t70/tcp
finger\t\t79/tcp
http\t\t80/tcp\t\twww
kerberos\t88/tcp\t\tkerberos5 krb5
kerberos\t88/udp\t\tkerberos5 krb5
pop3\t\t110/tcp\t\tpop-3
sunrpc\t\t111/tcp\t\tportmapper
sunrpc\t\t111/udp\t\tportmapper
ident\t\t113/tcp\t\tauth
nntp\t\t119/tcp\t\treadnews untp
ntp\t\t123/udp
netbios-ns\t137/udp
netbios-dgm\t138/udp
netbios-ssn\t139/tcp
imap2\t\t143/tcp\t\timap
snmp\t\t161/udp
snmp-trap\t162/udp\t\tsnmptrap
ldap\t\t389/tcp
ldap\t\t389/udp
https\t\t443/tcp
https\t\t443/udp
microsoft-ds\t445/tcp
syslog\t\t514/udp
submission\t587/tcp
ldaps\t\t636/tcp
rsync\t\t873/tcp
imaps\t\t993/tcp
pop3s\t\t995/tcp
socks\t\t1080/tcp
openvpn\t\t1194/tcp
openvpn\t\t1194/udp
ms-sql-s\t1433/tcp
mqtt\t\t1883/tcp
nfs\t\t2049/tcp
nfs\t\t2049/udp
mysql\t\t3306/tcp
postgresql\t5432/tcp\tpostgres
amqp\t\t5672/tcp
x11\t\t6000/tcp\t\tx11-0
redis\t\t6379/tcp
http-alt\t8080/tcp\t\twebcache
memcache\t11211/tcp
";

pub const PROTOCOLS: &str = "\
# Internet protocols (a short table of IANA's numbers).
ip\t0\tIP
icmp\t1\tICMP
igmp\t2\tIGMP
ipencap\t4\tIP-ENCAP
tcp\t6\tTCP
egp\t8\tEGP
udp\t17\tUDP
ipv6\t41\tIPv6
ipv6-route\t43\tIPv6-Route
ipv6-frag\t44\tIPv6-Frag
gre\t47\tGRE
esp\t50\tIPSEC-ESP
ah\t51\tIPSEC-AH
ipv6-icmp\t58\tIPv6-ICMP
ipv6-nonxt\t59\tIPv6-NoNxt
ipv6-opts\t60\tIPv6-Opts
ospf\t89\tOSPFIGP
pim\t103\tPIM
vrrp\t112\tVRRP
l2tp\t115\tL2TP
sctp\t132\tSCTP
udplite\t136\tUDPLite
mpls-in-ip\t137\tMPLS-in-IP
";

/// The live threads' ids and names.
pub fn threads() -> Vec<(u32, [u8; 16])> {
    sched::threads()
}

/// `/proc/self/task` listed from position `from`: a directory per thread. Their inode numbers are the ids moved
/// out of the tree's range.
pub fn thread_entries(from: usize) -> Vec<(String, u64, EntryType)> {
    threads().into_iter().skip(from).map(|(tid, _)| (tid.to_string(), task_ino(tid), EntryType::Directory)).collect()
}

fn task_ino(tid: u32) -> u64 {
    (1 << 39) | u64::from(tid)
}

/// A decimal name that is exactly a number's (no sign, no leading zero): ENOENT otherwise.
fn number(name: &str) -> Result<u32, Errno> {
    name.parse().ok().filter(|n: &u32| n.to_string() == name).ok_or(Errno::ENOENT)
}

/// `/proc/self/task/TID`: made when looked up, holding `comm` (the thread's name and a newline, as Linux shows it)
/// and `stat` as they are at that moment.
pub fn thread_dir(name: &str) -> Result<Arc<Inode>, Errno> {
    let tid = number(name)?;
    let all = sched::thread_facts();
    let me = all.iter().find(|t| t.tid == tid).ok_or(Errno::ENOENT)?;
    let mut text = comm(me).to_vec();
    text.push(b'\n');
    let mut entries = BTreeMap::new();
    entries.insert("comm".to_string(), Inode::new(Kind::File(Data::Owned(text)), 0o644));
    let stat = render_stat(&all, Some(me));
    entries.insert("stat".to_string(), Inode::new(Kind::File(Data::Owned(stat)), 0o444));
    Ok(Inode::numbered(Kind::Dir(entries), 0o555, task_ino(tid)))
}

fn comm(t: &ThreadFacts) -> &[u8] {
    &t.name[..t.name.iter().position(|&b| b == 0).unwrap_or(t.name.len())]
}

/// `/proc/self/stat`, rendered when opened: the process as its main thread, with every thread's time.
pub fn process_stat() -> Vec<u8> {
    render_stat(&sched::thread_facts(), None)
}

/// Clock ticks (`sysconf(_SC_CLK_TCK)`, 100 on Linux) in `ns`.
fn ticks(ns: u64) -> u64 {
    ns / 10_000_000
}

/// The 52 fields of a `stat` file in Linux's order (`man 5 proc`): of thread `thread`, or of the process. What Kiln
/// has no counterpart for is 0 as Linux shows it when unknown (fault counts, children's times, code addresses); the
/// program runs on a kernel of its own, so its parent, group and session are those getppid, getpgrp and getsid give.
fn render_stat(all: &[ThreadFacts], thread: Option<&ThreadFacts>) -> Vec<u8> {
    let main = all.iter().find(|t| u64::from(t.tid) == PID).or(all.first());
    let Some(me) = thread.or(main) else { return Vec::new() };
    let (id, ran, started, pending, exit_signal) = match thread {
        // A thread of a process leads it only if it is the first: the others end with no signal to a parent.
        Some(t) => (u64::from(t.tid), t.ran_ns, t.started_ns, t.pending, if u64::from(t.tid) == PID { 17 } else { -1 }),
        None => (PID, all.iter().map(|t| t.ran_ns).sum(), 0, all.iter().fold(0, |p, t| p | t.pending), 17),
    };
    let state = if thread.is_none() && all.iter().any(|t| t.state == b'R') { b'R' } else { me.state } as char;
    let (ignored, caught) = crate::syscalls::signal::ignored_and_caught();
    let (vsize, brk_start, stack_top) = crate::mm::maps::usage();
    let nice = crate::syscalls::priority::nice();
    let name = String::from_utf8_lossy(comm(me));
    let line = format!(
        "{id} ({name}) {state} {PPID} {PID} {PID} 0 -1 4194304 0 0 0 0 {utime} 0 0 0 {priority} {nice} {threads} 0 \
         {start} {vsize} {rss} 18446744073709551615 0 0 {stack_top} 0 0 {pending} {blocked} {ignored} {caught} 0 0 0 \
         {exit_signal} {cpu} 0 0 0 0 0 0 0 {brk_start} 0 0 0 0 0\n",
        utime = ticks(ran),
        priority = 20 + nice,
        threads = all.len(),
        start = ticks(started),
        rss = vsize / 4096,
        blocked = me.blocked,
        cpu = me.cpu,
    );
    line.into_bytes()
}

/// `/proc/self/fd` listed from position `from`: a link per open descriptor.
pub fn descriptor_entries(from: usize) -> Vec<(String, u64, EntryType)> {
    crate::file::descriptors()
        .into_iter()
        .skip(from)
        .map(|(fd, _)| (fd.to_string(), fd_ino(fd), EntryType::Symlink))
        .collect()
}

fn fd_ino(fd: u64) -> u64 {
    (1 << 38) | fd
}

/// `/proc/self/fd/N`: a link to what descriptor N is open on, as Linux names it (`crate::file::File::proc_link`).
pub fn descriptor_link(name: &str) -> Result<Arc<Inode>, Errno> {
    let fd = u64::from(number(name)?);
    let file = crate::file::get_including_path(fd).map_err(|_| Errno::ENOENT)?;
    Ok(Inode::numbered(Kind::Symlink(file.proc_link()), 0o777, fd_ino(fd)))
}
