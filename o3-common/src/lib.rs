//! Types shared by o3's kernel programs (`o3-ebpf`) and its user side (`o3-user`).
//!
//! Every struct is `#[repr(C)]` with explicit padding fields so both sides agree on the byte
//! layout; flags are `u32`, never `bool`. The user side gets `aya::Pod` impls through the `user`
//! feature.
#![no_std]

/// Kernel RSS counter kinds, numbered as `kmem:rss_stat`'s `member` field (MM_FILEPAGES,
/// MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES).
pub const RSS_FILE: usize = 0;
pub const RSS_ANON: usize = 1;
pub const RSS_SWAP: usize = 2;
pub const RSS_SHMEM: usize = 3;
pub const NR_RSS: usize = 4;

/// Capacity of the tracked-process and per-mm maps.
pub const MAX_TRACKED: u32 = 16384;
/// Capacity of the map holding counters of mms not yet attributed to a process.
pub const MAX_PENDING: u32 = 8192;
/// Ring buffer size for ordered events (bytes, power of two).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// `clone_flags` bit that marks a new thread (not a new process).
pub const CLONE_THREAD: u64 = 0x0001_0000;
/// `sched_switch.prev_state` bits of a task that will never run again (X, Z), in the classic
/// record's report encoding.
pub const TASK_STATE_DEAD_MASK: i64 = 0x10 | 0x20;
/// `TASK_DEAD` in a task's own state (the raw sched_switch argument) when it exits.
pub const TASK_DEAD: u32 = 0x80;

/// Marks an absent tracepoint field in [`Offsets`].
pub const NO_FIELD: u32 = u32::MAX;

/// Byte offsets of the tracepoint fields the programs read, taken from tracefs `format` files
/// at start-up so the programs do not depend on one kernel's record layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// task:task_newtask
    pub newtask_pid: u32,
    pub newtask_clone_flags: u32,
    /// sched:sched_process_exec (`filename` is a `__data_loc`)
    pub exec_filename: u32,
    pub exec_old_pid: u32,
    /// sched:sched_process_exit (`group_dead` exists since 6.16; NO_FIELD before)
    pub exit_group_dead: u32,
    /// sched:sched_switch
    pub switch_prev_state: u32,
    pub switch_next_pid: u32,
    /// kmem:rss_stat
    pub rss_mm_id: u32,
    pub rss_curr: u32,
    pub rss_member: u32,
    pub rss_size: u32,
    /// Bytes of the rss_stat record the program copies at once (covers the four fields).
    pub rss_len: u32,
    /// A new-peak event is emitted when the tree peak grew by at least this many bytes since the
    /// last one (the exact peak and its time are always in [`Tree`]).
    pub peak_event_step_bytes: u64,
}

/// Most CPUs the raw rss_stat program sums a counter over (`nr_cpu_ids` above this: the
/// classic program is used).
pub const MAX_CPUS: u32 = 512;

/// Which rss_stat program runs. `RSS_RAW` and `RSS_CLASSIC` measure; the others exist for
/// `cargo xtask bench record`, which measures the cost of each step of the raw program and
/// the two floors (a program that only filters on the root's pid), and measure nothing.
pub const RSS_RAW: u32 = 0;
pub const RSS_CLASSIC: u32 = 1;
/// Bench: the raw program stops after its early exit (the per-mm lookup).
pub const RSS_RAW_LOOKUP: u32 = 2;
/// Bench: the raw program stops after reading the counter's exact value.
pub const RSS_RAW_READ: u32 = 3;
/// Bench: floor programs that only compare the current pid with the root's.
pub const RSS_FLOOR_CLASSIC: u32 = 4;
pub const RSS_FLOOR_RAW: u32 = 5;

/// What the raw tracepoint programs need: byte offsets of kernel struct members from the
/// kernel's BTF, the CPU count, and which rss_stat program runs. The rss_stat program reads
/// an mm's RSS counters itself. On Linux 6.2 and later
/// `mm->rss_stat[member]` is a `struct percpu_counter`: the exact value is `count` plus every
/// CPU's `*per_cpu_ptr(counters, cpu)`, in pages.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawTp {
    /// `struct mm_struct` → `rss_stat` (array of `struct percpu_counter`).
    pub mm_rss_stat: u32,
    /// `sizeof(struct percpu_counter)`: the array's stride.
    pub counter_size: u32,
    /// `struct percpu_counter` → `lock` (raw_spinlock_t; a fold holds it).
    pub counter_lock: u32,
    /// `struct percpu_counter` → `count` (s64).
    pub counter_count: u32,
    /// `struct percpu_counter` → `counters` (`s32 __percpu *`).
    pub counter_counters: u32,
    /// `struct bpf_array` → `pptrs` (per-CPU value pointers of a per-CPU array map).
    pub array_pptrs: u32,
    /// `struct task_struct` → `mm`.
    pub task_mm: u32,
    /// `struct task_struct` → `pid` (raw task_newtask).
    pub task_pid: u32,
    /// `struct task_struct` → `tgid` (raw sched_switch: the process of the task switched in).
    pub task_tgid: u32,
    /// `struct linux_binprm` → `filename` (raw sched_process_exec).
    pub binprm_filename: u32,
    /// 1 if raw sched_process_exit has its `group_dead` argument (Linux 6.16 and later).
    pub exit_group_dead: u32,
    /// CPUs to sum over (`nr_cpu_ids`), at most [`MAX_CPUS`].
    pub ncpus: u32,
    /// log2 of the page size.
    pub page_shift: u32,
    /// `RSS_*`: which program runs.
    pub mode: u32,
}

/// Bytes of `struct percpu_counter` the raw program copies at once (lock, count, counters).
pub const COUNTER_READ_MAX: u32 = 64;

/// Slots of the per-CPU call counters (`CALLS`), one per attached tracepoint program.
pub const CALL_NEWTASK: u32 = 0;
pub const CALL_EXEC: u32 = 1;
pub const CALL_EXIT: u32 = 2;
pub const CALL_SWITCH: u32 = 3;
pub const CALL_RSS: u32 = 4;
/// The kernel sampler (`o3_tick`).
pub const CALL_TICK: u32 = 5;
pub const NR_CALLS: u32 = 6;

/// Value of the tracked-process map, keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tracked {
    /// tgid of the process that created it (0 for roots inserted by user space).
    pub parent: u32,
    /// `TRACK_*` bits.
    pub flags: u32,
    /// tid of the thread whose exit ended the thread group; its last context switch removes
    /// the entry (so its final slice of CPU time is still counted).
    pub dead_tid: u32,
    pub _pad: u32,
}

/// Memory of this process is counted only after its next exec (set for the child o3 spawns,
/// whose pre-exec address space is a copy of o3's own).
pub const TRACK_WAIT_EXEC: u32 = 1;
/// Inserted by user space (the root of the tree, or a process found at attach).
pub const TRACK_ROOT: u32 = 2;

/// Current RSS counters of one tracked mm, keyed by its kernel address (raw program) or by
/// the classic tracepoint's `mm_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmState {
    /// tgid the mm belongs to (the first tracked process seen using it).
    pub owner: u32,
    pub _pad: u32,
    /// Bytes per RSS kind, indexed by `RSS_*`.
    pub cur: [i64; NR_RSS],
    /// Highest file + anon + shmem of this mm and when (CLOCK_MONOTONIC ns); folded into
    /// the owner's [`ProcPeak`] when the mm is torn down.
    pub peak: i64,
    pub peak_ns: u64,
}

/// Longest rss_stat record prefix the program copies.
pub const RSS_RECORD_MAX: u32 = 64;

/// Counters seen for an mm before it could be attributed (fork copies, exec argument pages),
/// or seeded by user space for a process that existed before attach. `mask` has bit `1 << kind`
/// set for each kind present in `cur`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub mask: u32,
    /// For seeds: 1 if the kernel must add `cur` to the tree totals when the mm is attributed
    /// (user space had not counted it already).
    pub add_to_tree: u32,
    /// CLOCK_MONOTONIC ns of the values: pending counters older than a seed are ignored.
    pub t_ns: u64,
    pub cur: [i64; NR_RSS],
}

/// Peak of one process (over all the mms it used, e.g. before and after exec), keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcPeak {
    /// Highest file + anon + shmem bytes of one of its mms.
    pub rss_peak: i64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of that peak.
    pub rss_peak_ns: u64,
}

/// Tree-wide totals (single entry of an array map), updated with atomics.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    /// Sum over tracked mms, per RSS kind (bytes).
    pub cur: [i64; NR_RSS],
    /// file + anon + shmem of the whole tree (bytes).
    pub rss: i64,
    /// Highest `rss` ever reached (bytes) and when (CLOCK_MONOTONIC ns).
    pub rss_peak: i64,
    pub rss_peak_ns: u64,
    /// Peak value of the last emitted peak event.
    pub last_event_peak: i64,
    /// Events that did not fit into the ring buffer.
    pub events_lost: u64,
    /// Kernel samples that did not fit into their ring buffer.
    pub ticks_lost: u64,
}

/// Ring buffer size for kernel samples (bytes, power of two): about 3 s of samples at 1 kHz.
pub const TICKS_BYTES: u32 = 256 * 1024;

/// A sample of the tree taken in the kernel at the sampling interval (a perf-event timer on
/// one CPU runs the program; no user-space thread wakes for it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KTick {
    /// CLOCK_MONOTONIC ns.
    pub t_ns: u64,
    /// The tree's RSS by kind, bytes (as [`Tree::cur`]).
    pub cur: [i64; NR_RSS],
    pub rss: i64,
    pub rss_peak: i64,
    pub rss_peak_ns: u64,
    /// The tree's CPU time at `t_ns` (finished slices plus those in flight), ns; `u64::MAX`
    /// when a CPU's state could not be read consistently.
    pub cpu_ns: u64,
}

/// CPU-time state of the tracked tree on one CPU (slot `cpu` of an array), written only by
/// `sched_switch` on that CPU. One cache line each, so CPUs never write a shared line.
///
/// User space reads the slots from a memory mapping, each field with one load, in ascending
/// order. The fields form a sequence lock in that order: the writer bumps `seq_begin` first and
/// copies it into `seq_end` last, the reader sees `seq_end` first and `seq_begin` last, so a
/// copy with `seq_end == seq_begin` is one consistent snapshot of `total_ns` and the slice in
/// flight (stores and loads keep their order on x86-64).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunState {
    pub seq_end: u64,
    /// CPU time of the tree's finished slices on this CPU (ns).
    pub total_ns: u64,
    /// CLOCK_MONOTONIC ns of the last context switch on this CPU.
    pub since_ns: u64,
    /// tgid of the task switched in if it is tracked, else 0.
    pub tgid: u32,
    pub _pad: u32,
    pub seq_begin: u64,
    pub _line: [u64; 3],
}

impl RunState {
    /// The tree's CPU time on this CPU at `now_ns`, counting the slice in flight; `None` when
    /// the copy was torn by a concurrent context switch.
    pub fn cpu_at(&self, now_ns: u64) -> Option<u64> {
        if self.seq_end != self.seq_begin {
            return None;
        }
        let running = if self.tgid != 0 && self.since_ns != 0 {
            now_ns.saturating_sub(self.since_ns)
        } else {
            0
        };
        Some(self.total_ns + running)
    }
}

pub const EVENT_FORK: u32 = 1;
pub const EVENT_EXEC: u32 = 2;
pub const EVENT_EXIT: u32 = 3;
pub const EVENT_PEAK: u32 = 4;

pub const EVENT_FILENAME_LEN: usize = 64;

/// An ordered event sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC ns.
    pub t_ns: u64,
    /// EVENT_PEAK: tree rss bytes.
    pub value: i64,
    pub kind: u32,
    /// FORK: child tgid; EXEC: tgid; EXIT: tgid; PEAK: tgid that caused it.
    pub pid: u32,
    /// FORK: parent tgid; EXEC: old pid; EXIT: tid of the last thread.
    pub aux: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
    /// EXEC: the file name (NUL-terminated, truncated).
    pub filename: [u8; EVENT_FILENAME_LEN],
}

// ---------------------------------------------------------------- GPU memory (kprobes)

/// `GpuMem::kind` of an amdgpu VRAM manager (`amdgpu_vram_mgr_new` / `_del`).
pub const GPU_MEM_KIND_VRAM: u32 = 0;
/// `GpuMem::kind` of an amdgpu GTT manager (`amdgpu_gtt_mgr_new` / `_del`).
pub const GPU_MEM_KIND_GTT: u32 = 1;
/// Capacity of the per-manager map (one VRAM and one GTT manager per GPU).
pub const MAX_GPU_MANAGERS: u32 = 16;
/// Capacity of the LRU map of allocations between `_new` entry and return, keyed by tid (an
/// entry whose return was missed is evicted, never leaked).
pub const MAX_GPU_PENDING: u32 = 1024;

/// Byte offsets of the kernel struct fields the GPU-memory kprobes read, taken from the
/// kernel's BTF at start-up; 0 means unknown (the programs then do nothing).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuMemOffsets {
    /// `struct ttm_buffer_object` → `base.size` (`struct drm_gem_object`, size_t): bytes of
    /// a new allocation.
    pub tbo_size: u32,
    /// `struct ttm_resource` → `size` (size_t): bytes of a freed allocation.
    pub res_size: u32,
}

/// Usage of one memory manager (VRAM or GTT of one GPU), keyed by the manager's kernel
/// address. Updated with atomics; `cur` never goes below 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuMem {
    /// Bytes allocated through this manager since attach and not freed yet.
    pub cur: i64,
    /// Highest `cur` (bytes) and when (CLOCK_MONOTONIC ns).
    pub peak: i64,
    pub peak_ns: u64,
    /// Successful allocations and frees seen.
    pub allocs: u64,
    pub frees: u64,
    /// Frees that would have taken `cur` below 0 (memory allocated before attach): `cur` was
    /// clamped at 0.
    pub clamped: u64,
    /// `GPU_MEM_KIND_*`.
    pub kind: u32,
    pub _pad: u32,
}

/// An allocation between `_new`'s entry and its return, keyed by tid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuPending {
    /// Manager address.
    pub man: u64,
    /// Bytes requested.
    pub size: u64,
    /// `GPU_MEM_KIND_*`.
    pub kind: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are #[repr(C)], Copy, contain only integers and integer arrays,
    // and have explicit padding fields, so every bit pattern is valid and there is no
    // uninitialised padding.
    unsafe impl aya::Pod for super::Offsets {}
    // SAFETY: as above: repr(C), plain integers, explicit padding.
    unsafe impl aya::Pod for super::RawTp {}
    // SAFETY: as above: repr(C), plain integers, explicit padding.
    unsafe impl aya::Pod for super::Tracked {}
    // SAFETY: as above: repr(C), plain integers, explicit padding.
    unsafe impl aya::Pod for super::MmState {}
    // SAFETY: as above: repr(C), plain integers, explicit padding.
    unsafe impl aya::Pod for super::Pending {}
    // SAFETY: as above: repr(C), plain integers, explicit padding.
    unsafe impl aya::Pod for super::ProcPeak {}
    // SAFETY: as above: repr(C), plain integers, explicit padding.
    unsafe impl aya::Pod for super::Tree {}
    // SAFETY: as above: repr(C), plain integers, explicit padding.
    unsafe impl aya::Pod for super::RunState {}
    // SAFETY: as above: repr(C), plain integers, explicit padding.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above: repr(C), plain integers, explicit padding.
    unsafe impl aya::Pod for super::KTick {}
    // SAFETY: as above: repr(C), plain integers, explicit padding.
    unsafe impl aya::Pod for super::GpuMemOffsets {}
    // SAFETY: as above: repr(C), plain integers, explicit padding.
    unsafe impl aya::Pod for super::GpuMem {}
    // SAFETY: as above: repr(C), plain integers, explicit padding.
    unsafe impl aya::Pod for super::GpuPending {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Offsets>(), 12 * 4 + 8);
        assert_eq!(size_of::<RawTp>(), 14 * 4);
        assert_eq!(size_of::<Tracked>(), 16);
        assert_eq!(size_of::<MmState>(), 8 + 32 + 16);
        assert_eq!(size_of::<Pending>(), 16 + 32);
        assert_eq!(size_of::<ProcPeak>(), 16);
        assert_eq!(size_of::<Tree>(), 32 + 6 * 8);
        assert_eq!(size_of::<RunState>(), 64);
        assert_eq!(size_of::<Event>(), 8 + 8 + 16 + 16 + EVENT_FILENAME_LEN);
        assert_eq!(size_of::<KTick>(), 8 * 9);
    }

    #[test]
    fn gpu_layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<GpuMemOffsets>(), 8);
        assert_eq!(size_of::<GpuMem>(), 6 * 8 + 8);
        assert_eq!(size_of::<GpuPending>(), 8 + 8 + 8);
    }

    #[test]
    fn run_state_counts_the_slice_in_flight_and_rejects_torn_copies() {
        let mut r = RunState {
            seq_end: 4,
            total_ns: 1_000,
            since_ns: 500,
            tgid: 7,
            _pad: 0,
            seq_begin: 4,
            _line: [0; 3],
        };
        assert_eq!(r.cpu_at(800), Some(1_300));
        // A clock read that is older than the switch never counts negative time.
        assert_eq!(r.cpu_at(400), Some(1_000));
        r.tgid = 0;
        assert_eq!(r.cpu_at(800), Some(1_000));
        r.seq_begin = 5;
        assert_eq!(r.cpu_at(800), None);
    }
}
