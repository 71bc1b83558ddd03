//! Synthetic workloads whose truth the kernel knows, for o3's tests, benchmarks and demo.
//!
//! Each writes a JSON report of the kernel's own figures for itself (VmHWM, rusage) with
//! `--report FILE`, so a test compares o3's numbers with ground truth that o3 did not produce.
//!
//!   spike --mib N [--hold-us U] [--repeat R] [--gap-ms G]   map+touch N MiB, hold, unmap; repeat
//!   cpu --threads T --ms M                                 burn M ms of CPU on each of T threads
//!   tree --children C --mib N [--hold-ms H] [--grandchild] children allocate at the same time
//!   hold --mib N                                           (internal) a child of `tree`
//!   loop --ms M                                            burn M ms of CPU on one thread
//!   work --iters N [--cpu C]                               fixed work (on CPU C); its duration
//!   faults --mib N --repeat R                              page-fault-heavy work; its duration
//!   wait --ms M                                            sleep M ms (a process to signal)
//!   io --mib N --file F [--go-stdin 1]                     fault in N MiB, write N MiB to F
//!                                                          and fsync; counters before/after
//!
//! With `--ready 1`, any of them first prints `o3-workload: ready` on stderr, so a test knows
//! the workload runs (and is about to start its work) without sleeping for a guess.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::io::{Read, Write};
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use std::process::Command;
use std::time::{Duration, Instant};

fn args() -> (String, BTreeMap<String, String>, bool) {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_default();
    let mut opts = BTreeMap::new();
    let mut grandchild = false;
    let rest: Vec<String> = it.collect();
    let mut i = 0;
    while i < rest.len() {
        let k = rest[i].trim_start_matches("--").to_string();
        if k == "grandchild" {
            grandchild = true;
            i += 1;
            continue;
        }
        let v = rest.get(i + 1).cloned().unwrap_or_else(|| {
            eprintln!("o3-workload: --{k} needs a value");
            std::process::exit(2)
        });
        opts.insert(k, v);
        i += 2;
    }
    (mode, opts, grandchild)
}

fn num(opts: &BTreeMap<String, String>, k: &str, default: u64) -> u64 {
    opts.get(k).map_or(default, |v| {
        v.parse().unwrap_or_else(|_| {
            eprintln!("o3-workload: --{k} must be a whole number");
            std::process::exit(2)
        })
    })
}

fn status_kib(pid: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| {
            v.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn rusage_self() -> (u64, u64) {
    use nix::sys::resource::{getrusage, UsageWho};
    let r = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage of this process");
    let ns =
        |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000_000 + t.tv_usec() as u64 * 1000;
    (
        ns(r.user_time()) + ns(r.system_time()),
        r.max_rss() as u64 * 1024,
    )
}

fn report(opts: &BTreeMap<String, String>, extra: serde_json::Value) {
    let (cpu_ns, maxrss) = rusage_self();
    let mut v = serde_json::json!({
        "pid": std::process::id(),
        "vm_hwm_bytes": status_kib("self", "VmHWM") * 1024,
        "vm_rss_bytes": status_kib("self", "VmRSS") * 1024,
        "rusage_cpu_ns": cpu_ns,
        "rusage_maxrss_bytes": maxrss,
    });
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    if let Some(path) = opts.get("report") {
        std::fs::write(path, v.to_string()).expect("writing the report");
    }
}

/// Maps `bytes` of anonymous memory and writes one byte per page so every page is resident.
fn touch(bytes: usize) -> NonNull<c_void> {
    use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
    let len = NonZeroUsize::new(bytes).expect("a mapping of at least one byte");
    // SAFETY: a new anonymous private mapping aliases nothing.
    let p = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )
    }
    .unwrap_or_else(|e| panic!("mmap of {bytes} bytes failed: {e}"));
    let mut off = 0;
    while off < bytes {
        // SAFETY: within the mapping just created, which is readable and writable.
        unsafe { std::ptr::write_volatile(p.cast::<u8>().as_ptr().add(off), 1) };
        off += 4096;
    }
    p
}

fn untouch(p: NonNull<c_void>, bytes: usize) {
    // SAFETY: unmapping exactly the mapping created by `touch`, used no more.
    unsafe { nix::sys::mman::munmap(p, bytes) }.expect("munmap of our own mapping");
}

/// Exact RSS of this process from a page-table walk (`/proc/self/smaps_rollup`), unlike
/// VmRSS/VmHWM, which read per-CPU counters without summing their pending deltas.
fn smaps_rss(pid: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn spike(opts: &BTreeMap<String, String>) {
    let bytes = num(opts, "mib", 64) as usize * 1024 * 1024;
    let hold = Duration::from_micros(num(opts, "hold-us", 1000));
    let gap = Duration::from_millis(num(opts, "gap-ms", 3));
    let repeat = num(opts, "repeat", 10);
    // A first read warms the heap the reads use, so the reads during the spikes change nothing.
    let mut smaps_max = smaps_rss("self");
    let mut walk_ns = 0;
    for _ in 0..repeat {
        let p = touch(bytes);
        std::thread::sleep(hold);
        // Just before the unmap: the largest RSS of this spike.
        let t = Instant::now();
        smaps_max = smaps_max.max(smaps_rss("self"));
        walk_ns = walk_ns.max(t.elapsed().as_nanos() as u64);
        untouch(p, bytes);
        std::thread::sleep(gap);
    }
    report(
        opts,
        serde_json::json!({
            "mode": "spike",
            "smaps_rss_max_during_hold_bytes": smaps_max,
            "smaps_walk_max_ns": walk_ns,
        }),
    );
}

fn burn_thread_cpu(ms: u64) {
    let target = ms * 1_000_000;
    let start = thread_cpu_ns();
    let mut x = 0u64;
    while thread_cpu_ns() - start < target {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
}

fn thread_cpu_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    let ts = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("this thread's CPU clock");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

fn cpu(opts: &BTreeMap<String, String>) {
    let threads = num(opts, "threads", 2);
    let ms = num(opts, "ms", 500);
    let hs: Vec<_> = (0..threads)
        .map(|_| std::thread::spawn(move || burn_thread_cpu(ms)))
        .collect();
    for h in hs {
        h.join().expect("burner thread");
    }
    report(opts, serde_json::json!({"mode": "cpu"}));
}

/// A pipe without CLOEXEC, so children inherit its ends.
fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().expect("a pipe")
}

/// `tree`: C children each map N MiB, say ready, and hold until released; the parent reads
/// each child's VmRSS/VmHWM while all of them hold, so the simultaneous sum is known.
fn tree(opts: &BTreeMap<String, String>, grandchild: bool) {
    let children = num(opts, "children", 2);
    let mib = num(opts, "mib", 32);
    let hold = Duration::from_millis(num(opts, "hold-ms", 50));
    let (ready_r, ready_w) = pipe();
    let (go_r, go_w) = pipe();
    // Only the children's ends are inherited: a child holding a write end of `go` would never
    // see it close.
    for fd in [&ready_r, &go_w] {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("FD_CLOEXEC");
    }
    let exe = std::env::current_exe().expect("own path");
    let mut kids = Vec::new();
    for _ in 0..children {
        let mut c = Command::new(&exe);
        c.args(["hold", "--mib", &mib.to_string()])
            .args(["--ready-fd", &ready_w.as_raw_fd().to_string()])
            .args(["--go-fd", &go_r.as_raw_fd().to_string()]);
        if grandchild {
            c.args(["--spawn", "1"]);
        }
        kids.push(c.spawn().expect("spawning a child"));
    }
    // Our copies of the child-side ends are closed.
    drop((ready_w, go_r));
    let mut ready = std::fs::File::from(ready_r);
    let mut buf = vec![0u8; children as usize];
    ready.read_exact(&mut buf).expect("children ready");
    let t = Instant::now();
    let mut held = Vec::new();
    for k in &kids {
        let pid = k.id().to_string();
        held.push(serde_json::json!({
            "pid": k.id(),
            "vm_rss_bytes": status_kib(&pid, "VmRSS") * 1024,
            "vm_hwm_bytes": status_kib(&pid, "VmHWM") * 1024,
            "smaps_rss_bytes": smaps_rss(&pid),
        }));
    }
    let parent_rss = smaps_rss("self");
    std::thread::sleep(hold.saturating_sub(t.elapsed()));
    // Closing the write end releases every child (they read EOF).
    drop(go_w);
    for mut k in kids {
        let out = k.wait().expect("child");
        assert!(out.success(), "child failed: {out:?}");
    }
    report(
        opts,
        serde_json::json!({"mode": "tree", "children": held, "parent_smaps_rss_during_hold_bytes": parent_rss}),
    );
}

fn hold(opts: &BTreeMap<String, String>) {
    let bytes = num(opts, "mib", 32) as usize * 1024 * 1024;
    let ready_fd = num(opts, "ready-fd", 0) as RawFd;
    let go_fd = num(opts, "go-fd", 0) as RawFd;
    let mut grandchild = None;
    if num(opts, "spawn", 0) == 1 {
        // A grandchild started after recording began: allocates 8 MiB and holds until we end.
        let exe = std::env::current_exe().expect("own path");
        grandchild = Some(
            Command::new(exe)
                .args([
                    "spike",
                    "--mib",
                    "8",
                    "--hold-us",
                    "200000",
                    "--repeat",
                    "1",
                ])
                .spawn()
                .expect("grandchild"),
        );
    }
    let p = touch(bytes);
    // SAFETY: the fds were inherited from the parent for exactly this use.
    let (mut ready, mut go) = unsafe {
        (
            std::fs::File::from_raw_fd(ready_fd),
            std::fs::File::from_raw_fd(go_fd),
        )
    };
    ready.write_all(&[1]).expect("signal ready");
    drop(ready);
    let mut b = [0u8; 1];
    let _ = go.read(&mut b);
    untouch(p, bytes);
    if let Some(mut g) = grandchild {
        let _ = g.wait();
    }
}

/// A fixed amount of single-threaded integer work; reports how long the loop took, so a
/// benchmark sees any slowdown caused by the monitor.
fn work(opts: &BTreeMap<String, String>) {
    let iters = num(opts, "iters", 100_000);
    if let Some(cpu) = opts.get("cpu") {
        pin(cpu.parse().unwrap_or_else(|_| {
            eprintln!("o3-workload: --cpu must be a CPU number");
            std::process::exit(2)
        }));
    }
    let t = Instant::now();
    let mut x = 1u64;
    for i in 0..iters {
        for j in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i ^ j);
        }
        std::hint::black_box(x);
    }
    let ns = t.elapsed().as_nanos() as u64;
    report(opts, serde_json::json!({"mode": "work", "work_ns": ns}));
}

/// Runs this thread on `cpu` only.
fn pin(cpu: usize) {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        eprintln!("o3-workload: cannot run on CPU {cpu}: {e}");
        std::process::exit(2);
    }
}

/// Page-fault-heavy work: map, touch and unmap N MiB, R times; reports how long it took.
fn faults(opts: &BTreeMap<String, String>) {
    let bytes = num(opts, "mib", 256) as usize * 1024 * 1024;
    let repeat = num(opts, "repeat", 4);
    let t = Instant::now();
    // Each round's own time too: the first touch of memory the machine has not used for a
    // while costs more (on a VM, the host backs it then), so later rounds are steadier.
    let mut rounds = Vec::new();
    for _ in 0..repeat {
        let r = Instant::now();
        let p = touch(bytes);
        untouch(p, bytes);
        rounds.push(r.elapsed().as_nanos() as u64);
    }
    let ns = t.elapsed().as_nanos() as u64;
    report(
        opts,
        serde_json::json!({"mode": "faults", "work_ns": ns, "round_ns": rounds}),
    );
}

fn busy_loop(opts: &BTreeMap<String, String>) {
    burn_thread_cpu(num(opts, "ms", 2000));
    report(opts, serde_json::json!({"mode": "loop"}));
}

/// The counters `time -v` reports, as the kernel gives them to this process about itself:
/// getrusage(RUSAGE_SELF) and `/proc/self/io`.
fn counters_self() -> serde_json::Value {
    use nix::sys::resource::{getrusage, UsageWho};
    let r = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage of this process");
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let io_field = |key: &str| -> u64 {
        io.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    serde_json::json!({
        "minflt": r.minor_page_faults(),
        "majflt": r.major_page_faults(),
        "nvcsw": r.voluntary_context_switches(),
        "nivcsw": r.involuntary_context_switches(),
        "inblock_bytes": r.block_reads() * 512,
        "oublock_bytes": r.block_writes() * 512,
        "io_read_bytes": io_field("read_bytes"),
        "io_write_bytes": io_field("write_bytes"),
    })
}

/// Faults in N MiB of anonymous memory and writes N MiB to `--file` with an fsync, reporting
/// its own counters before and after. With `--go-stdin 1` it starts on a line from stdin and,
/// once its report is written, stays until stdin closes (a process to attach to, whose work
/// starts when the test says so and which is still there to be read at the end).
fn io(opts: &BTreeMap<String, String>) {
    let bytes = num(opts, "mib", 32) as usize * 1024 * 1024;
    let path = opts.get("file").cloned().unwrap_or_else(|| {
        eprintln!("o3-workload: io needs --file PATH");
        std::process::exit(2)
    });
    let go_stdin = num(opts, "go-stdin", 0) == 1;
    let mut line = String::new();
    if go_stdin {
        let _ = std::io::stdin().read_line(&mut line);
    }
    let before = counters_self();
    let p = touch(bytes);
    untouch(p, bytes);
    let mut f = std::fs::File::create(&path).expect("creating --file");
    let chunk = vec![0x5au8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n]).expect("writing --file");
        left -= n;
    }
    f.sync_all().expect("fsync of --file");
    drop(f);
    let after = counters_self();
    report(
        opts,
        serde_json::json!({"mode": "io", "before": before, "after": after}),
    );
    if go_stdin {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }
}

/// Sleeps `--ms` milliseconds: a running process that does nothing.
fn wait(opts: &BTreeMap<String, String>) {
    std::thread::sleep(Duration::from_millis(num(opts, "ms", 30_000)));
}

fn main() {
    let (mode, opts, grandchild) = args();
    if num(&opts, "ready", 0) == 1 {
        eprintln!("o3-workload: ready");
    }
    match mode.as_str() {
        "spike" => spike(&opts),
        "cpu" => cpu(&opts),
        "tree" => tree(&opts, grandchild),
        "hold" => hold(&opts),
        "loop" => busy_loop(&opts),
        "work" => work(&opts),
        "faults" => faults(&opts),
        "wait" => wait(&opts),
        "io" => io(&opts),
        _ => {
            eprintln!(
                "usage: o3-workload spike|cpu|tree|loop|work|faults|wait|io [--OPTION VALUE]... [--report FILE] [--ready 1]"
            );
            std::process::exit(2);
        }
    }
}
