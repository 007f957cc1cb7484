//! The zero-copy lane: a body kept in memory whose bytes are also a file
//! on disk goes from the page cache to the socket with `sendfile(2)`, as
//! nginx sends files, instead of being copied from user memory.
//!
//! hyper writes bodies only from memory. The lane sits below it, in the
//! connection's stream: a handler *registers* a body slice together with
//! the file handle it was read from, hyper queues that same slice (its
//! vectored write strategy passes body bytes through uncopied), and when
//! the stream is asked to write a slice that lies inside a registered body
//! it sends those bytes from the file instead.
//!
//! Correctness never rests on the lane. A registered body is the very
//! bytes its handle reads: tree files are content-addressed blobs, never
//! rewritten in place, and the cache keeps the handle it read them through.
//! Any slice the lane does not recognise (hyper flattened it, HTTP/2 framed
//! it, the registration was pruned), any page not in the page cache, a
//! kernel without `cachestat(2)`, or a `sendfile` refusal, is written from
//! memory as before. `sendfile` runs on the connection's thread only when
//! `cachestat` says every page it reads is cached: file work that may wait
//! on a disk stays on the blocking pool. (A page still being read in, or
//! evicted in the microseconds between the check and the call, is the one
//! case where `sendfile` waits; nginx sends every file that way.)
//!
//! Under HTTP/2 the lane engages too, for DATA frames that the h2 crate
//! passes through uncopied; each `sendfile` is bounded by the slice it
//! replaces, so the framing stays as h2 wrote it.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use axum::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The smallest body worth a `sendfile`: below it, copying the bytes costs
/// less than the second system call and the page-cache check.
pub const MIN_BODY: u64 = 16 * 1024;
/// Registrations a connection keeps. HTTP/1.1 writes one response at a
/// time, so this only bounds what an unsent body (a HEAD, a dropped
/// connection) holds on to.
const SLOTS: usize = 4;
/// `cachestat(2)`: new system calls share one number on every architecture
/// but alpha; the libc crate does not name it for x86-64 yet.
const SYS_CACHESTAT: libc::c_long = 451;

/// Set once the kernel lacks `cachestat` (before 6.5): nothing is
/// registered from then on.
static NO_CACHESTAT: AtomicBool = AtomicBool::new(false);
/// Set once `cachestat` refused a file (one owned by another user that we
/// may not write): that file's bodies go from memory; logged once.
static REFUSED_LOGGED: AtomicBool = AtomicBool::new(false);

/// Body bytes this process has sent with `sendfile`: `/metrics` shows
/// whether the lane works on this kernel and tree.
static SENT: AtomicU64 = AtomicU64::new(0);

/// Body bytes sent with `sendfile` so far.
pub fn bytes_sent() -> u64 {
    SENT.load(Ordering::Relaxed)
}

/// The registered bodies of one connection.
#[derive(Debug, Default)]
pub struct Lane {
    slots: Mutex<Vec<FromFile>>,
    /// Whether any slot is held: the common small-file write skips the lock.
    held: AtomicBool,
}

/// A response body that holds the bytes of a file, registered by the
/// handler on its connection's lane.
#[derive(Debug)]
pub struct FromFile {
    /// The body, the very slice the response sends.
    pub body: Bytes,
    /// The handle the bytes were read through.
    pub file: Arc<File>,
    /// Where `body` starts in `file`.
    pub offset: u64,
}

impl FromFile {
    /// The addresses the body occupies.
    fn span(&self) -> std::ops::Range<usize> {
        let start = self.body.as_ptr() as usize;
        start..start + self.body.len()
    }
}

/// A registered range that a write may send from its file.
struct Hit {
    file: Arc<File>,
    offset: u64,
    len: usize,
}

impl Lane {
    /// Lets a response body be sent from its file.
    pub fn register(&self, body: FromFile) {
        if NO_CACHESTAT.load(Ordering::Relaxed) {
            return;
        }
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() >= SLOTS {
            slots.remove(0);
        }
        slots.push(body);
        self.held.store(true, Ordering::Release);
    }

    /// The registered range `slice` starts in, if any.
    fn find(&self, slice: &[u8]) -> Option<Hit> {
        let at = slice.as_ptr() as usize;
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.iter().find_map(|s| {
            let span = s.span();
            span.contains(&at).then(|| Hit {
                file: Arc::clone(&s.file),
                offset: s.offset + (at - span.start) as u64,
                len: slice.len().min(span.end - at),
            })
        })
    }

    /// Forgets the registrations that hold address `at`: sent whole, or
    /// going from memory.
    fn forget(&self, at: usize) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|s| !s.span().contains(&at));
        self.held.store(!slots.is_empty(), Ordering::Release);
    }
}

/// A connection's stream with the lane below hyper.
#[derive(Debug)]
pub struct LaneStream {
    stream: TcpStream,
    lane: Arc<Lane>,
    /// The slice address found resident when its head went out, so the
    /// body's write that follows does not ask `cachestat` again.
    checked: usize,
}

impl LaneStream {
    /// Wraps an accepted connection; `lane` goes to its requests.
    pub fn new(stream: TcpStream, lane: Arc<Lane>) -> Self {
        Self {
            stream,
            lane,
            checked: 0,
        }
    }

    /// Runs the non-blocking write `io` once the socket has room.
    fn poll_io(
        &self,
        cx: &mut Context<'_>,
        mut io: impl FnMut() -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_io(Interest::WRITABLE, &mut io) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    /// Sends `hit` from its file, or `None`: write it from memory instead.
    fn poll_sendfile(&self, cx: &mut Context<'_>, hit: &Hit) -> Option<Poll<io::Result<usize>>> {
        let sent = self.poll_io(cx, || {
            let mut offset = libc::off_t::try_from(hit.offset)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: both descriptors are open for the call (the stream
            // and the `Arc<File>` are borrowed); `offset` is a valid
            // out-pointer, and the kernel reads no user memory.
            let n = unsafe {
                libc::sendfile(
                    self.stream.as_raw_fd(),
                    hit.file.as_raw_fd(),
                    &mut offset,
                    hit.len,
                )
            };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        });
        match sent {
            // Nothing sent: the file is shorter than its bytes were.
            Poll::Ready(Ok(0)) => None,
            Poll::Ready(Ok(n)) => {
                SENT.fetch_add(n as u64, Ordering::Relaxed);
                Some(Poll::Ready(Ok(n)))
            }
            // A file system that cannot splice: the bytes are here.
            Poll::Ready(Err(e))
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                ) =>
            {
                None
            }
            other => Some(other),
        }
    }

    /// Writes `bufs` (a response head) with `MSG_MORE`: the body sent next
    /// from the file joins it in one segment instead of following in a
    /// second one, as nginx's `tcp_nopush` does. A head written alone costs
    /// a whole pass through the TCP stack, as much as the body.
    fn poll_write_more(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, || {
            // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix;
            // the slices outlive the call and the kernel only reads them.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            // SAFETY: `msg` points at valid iovecs and nothing else.
            let n = unsafe {
                libc::sendmsg(
                    self.stream.as_raw_fd(),
                    &msg,
                    libc::MSG_MORE | libc::MSG_NOSIGNAL,
                )
            };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        })
    }
}

impl AsyncRead for LaneStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LaneStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.lane.held.load(Ordering::Acquire) {
            // Memory slices before the first registered one go out in one
            // write; the registered one starts the next.
            for (i, slice) in bufs.iter().enumerate() {
                let Some(hit) = self.lane.find(slice) else {
                    continue;
                };
                let at = slice.as_ptr() as usize;
                // Decided before the head goes out with MSG_MORE: a body
                // that cannot go from its file is forgotten and goes from
                // memory with the head, in one write.
                if std::mem::take(&mut self.checked) != at
                    && !resident(&hit.file, hit.offset, hit.len)
                {
                    self.lane.forget(at);
                    break;
                }
                if i > 0 {
                    self.checked = at;
                    return self.poll_write_more(cx, &bufs[..i]);
                }
                match self.poll_sendfile(cx, &hit) {
                    Some(done) => {
                        match done {
                            Poll::Ready(Ok(n)) if n == hit.len => self.lane.forget(at),
                            // Waiting for room: the check stands for the retry.
                            Poll::Pending => self.checked = at,
                            _ => {}
                        }
                        return done;
                    }
                    None => {
                        self.lane.forget(at);
                        break;
                    }
                }
            }
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// `struct cachestat_range` of `<linux/mman.h>`.
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// `struct cachestat` of `<linux/mman.h>`.
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Whether every page of `file` that `len` bytes from `offset` span is in
/// the page cache; false when that cannot be known.
fn resident(file: &File, offset: u64, len: usize) -> bool {
    if len == 0 || NO_CACHESTAT.load(Ordering::Relaxed) {
        return false;
    }
    let range = CachestatRange {
        off: offset,
        len: len as u64,
    };
    let mut stat = Cachestat::default();
    // SAFETY: `range` and `stat` are valid for the call and laid out as the
    // kernel's structs; the descriptor is open while `file` is borrowed.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0 as libc::c_uint,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSYS) {
            if !NO_CACHESTAT.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    "this kernel has no cachestat (Linux 6.5 and later do): kept tarballs are written from memory, not with sendfile"
                );
            }
        } else if !REFUSED_LOGGED.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "cachestat refused a served file ({e}; it reports only on files this user may write): such files are written from memory, not with sendfile"
            );
        }
        return false;
    }
    let page = page_size();
    let pages = (offset + len as u64 - 1) / page - offset / page + 1;
    stat.nr_cache >= pages
}

fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the running system.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A file on the real disk (not tmpfs, whose pages cannot be dropped)
    /// holding `bytes`, synced so its pages are clean.
    fn disk_file(bytes: &[u8]) -> (tempfile::NamedTempFile, Arc<File>) {
        let mut tmp = tempfile::NamedTempFile::new_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        tmp.write_all(bytes).unwrap();
        tmp.as_file().sync_all().unwrap();
        let file = Arc::new(File::open(tmp.path()).unwrap());
        (tmp, file)
    }

    fn register(lane: &Lane, body: Bytes, file: &Arc<File>, offset: u64) -> Bytes {
        lane.register(FromFile {
            body: body.clone(),
            file: Arc::clone(file),
            offset,
        });
        body
    }

    fn drop_pages(file: &File) {
        // SAFETY: advice on an open descriptor; no memory is passed.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }

    #[test]
    fn residency_follows_the_page_cache() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (_tmp, file) = disk_file(&bytes);
        std::io::Read::read_to_end(&mut &*file, &mut Vec::new()).unwrap();
        assert!(resident(&file, 0, bytes.len()));
        assert!(resident(&file, 5000, 70_000));
        drop_pages(&file);
        assert!(
            !resident(&file, 0, bytes.len()),
            "dropped pages are not cached"
        );
        assert!(!resident(&file, 0, 0));
    }

    /// Serves `parts` (memory slices and lane-backed ones) over a real
    /// socket pair through a `LaneStream` and returns what the peer read.
    async fn through_lane(lane: Arc<Lane>, parts: Vec<Bytes>) -> Vec<u8> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let mut peer = TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        let (stream, _) = listener.accept().await.unwrap();
        let mut out = LaneStream::new(stream, lane);
        let mut rest: Vec<Bytes> = parts;
        while !rest.is_empty() {
            let slices: Vec<IoSlice<'_>> = rest.iter().map(|b| IoSlice::new(b)).collect();
            let mut n = out.write_vectored(&slices).await.unwrap();
            assert!(n > 0);
            while n > 0 {
                let first = &mut rest[0];
                let take = n.min(first.len());
                let _ = first.split_to(take);
                n -= take;
                if first.is_empty() {
                    rest.remove(0);
                }
            }
        }
        out.shutdown().await.unwrap();
        drop(out);
        reader.await.unwrap()
    }

    #[tokio::test]
    async fn a_registered_body_goes_from_the_file_and_the_rest_from_memory() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let (_tmp, file) = disk_file(&bytes);
        std::io::Read::read_to_end(&mut &*file, &mut Vec::new()).unwrap();
        // Memory holds other bytes than the file, so the peer shows which
        // was sent (a real registration holds the file's own bytes).
        let memory = Bytes::from(vec![0u8; bytes.len()]);
        let lane = Arc::new(Lane::default());
        // A range, as a 206 sends it: the slice and its offset in the file.
        let part = register(&lane, memory.slice(1000..250_000), &file, 1000);
        let got = through_lane(
            Arc::clone(&lane),
            vec![
                Bytes::from_static(b"HEAD\r\n"),
                part,
                Bytes::from_static(b"TAIL"),
            ],
        )
        .await;
        let mut want = b"HEAD\r\n".to_vec();
        want.extend_from_slice(&bytes[1000..250_000]);
        want.extend_from_slice(b"TAIL");
        assert!(got == want, "the registered range came from the file");
        assert!(
            !lane.held.load(Ordering::Acquire),
            "a body sent whole is forgotten"
        );
    }

    #[tokio::test]
    async fn pages_not_cached_are_written_from_memory() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
        let (_tmp, file) = disk_file(&bytes);
        drop_pages(&file);
        // Memory holds other bytes than the file: whichever was sent shows.
        let memory = Bytes::from(vec![7u8; bytes.len()]);
        let lane = Arc::new(Lane::default());
        let body = register(&lane, memory.clone(), &file, 0);
        let got = through_lane(Arc::clone(&lane), vec![body]).await;
        assert_eq!(
            got, memory,
            "a cold file is never read on the connection's thread"
        );
        assert!(
            !lane.held.load(Ordering::Acquire),
            "a body that went from memory is forgotten"
        );
    }

    #[test]
    fn registrations_are_bounded() {
        let (_tmp, file) = disk_file(b"x");
        let lane = Lane::default();
        let bodies: Vec<Bytes> = (0..SLOTS + 2)
            .map(|i| register(&lane, Bytes::from(vec![i as u8; 8]), &file, 0))
            .collect();
        assert!(lane.find(&bodies[0]).is_none(), "the oldest was pruned");
        let hit = lane.find(&bodies[SLOTS + 1][3..]).unwrap();
        assert_eq!((hit.offset, hit.len), (3, 5));
        assert!(lane.find(b"elsewhere").is_none());
    }
}
