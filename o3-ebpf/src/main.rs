//! o3's kernel programs. Tracepoints (the CI kernel has no kprobes), plus optional kprobes on
//! amdgpu's memory managers for exact GPU-memory peaks, attached only where kprobes exist.
//!
//! The tracked set is a root process and every process it creates (task:task_newtask, whose
//! clone_flags tell threads from processes). Per tracked process tree:
//! - sched:sched_switch charges on-CPU nanoseconds to the task being switched out, per CPU;
//! - kmem:rss_stat keeps the current RSS of each tracked mm by kind and the in-kernel maximum
//!   of the whole tree's RSS, updated on every change, so a microsecond-long peak is exact;
//! - exec, exit and new-peak events go through a ring buffer, in order.
//!
//! Each entry point is a thin wrapper around a `try_*` function; field offsets come from the
//! tracefs format files through the `OFFSETS` global set by the loader.
#![no_std]
#![no_main]
// The bpfel target has no atomic RMW in its target spec, but the BPF instruction set (v3) has
// atomic add, exchange and compare-exchange; the intrinsics emit them directly.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::EbpfContext;
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes,
    },
    macros::{kprobe, kretprobe, map, perf_event, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        PerfEventContext, ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext,
    },
};
use core::ptr::write_volatile;
use o3_common::*;

#[no_mangle]
static OFFSETS: Offsets = Offsets {
    newtask_pid: NO_FIELD,
    newtask_clone_flags: NO_FIELD,
    exec_filename: NO_FIELD,
    exec_old_pid: NO_FIELD,
    exit_group_dead: NO_FIELD,
    switch_prev_state: NO_FIELD,
    switch_next_pid: NO_FIELD,
    rss_mm_id: NO_FIELD,
    rss_curr: NO_FIELD,
    rss_member: NO_FIELD,
    rss_size: NO_FIELD,
    rss_len: 0,
    peak_event_step_bytes: 1 << 20,
};

#[no_mangle]
static RAW: RawTp = RawTp {
    mm_rss_stat: 0,
    counter_size: 0,
    counter_lock: 0,
    counter_count: 0,
    counter_counters: 0,
    array_pptrs: 0,
    task_mm: 0,
    task_pid: 0,
    task_tgid: 0,
    binprm_filename: 0,
    exit_group_dead: 0,
    ncpus: 0,
    page_shift: 12,
    mode: RSS_CLASSIC,
};

#[map]
// The hash maps are preallocated (the default): an insert into a map without preallocation
// can fail in a tracepoint while the kernel refills its allocation cache, and a failed insert
// would lose a process or a thread's CPU time.
static TRACKED: HashMap<u32, Tracked> = HashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
static MMS: HashMap<u64, MmState> = HashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
static PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(MAX_PENDING, 0);
#[map]
static SEEDS: HashMap<u32, Pending> = HashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
static PROC_PEAK: HashMap<u32, ProcPeak> = HashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
// TREE and RUN are memory-mapped by user space (BPF_F_MMAPABLE): the sampler reads them with
// plain loads, no system call per tick.
static TREE: Array<Tree> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static PROC_CPU: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
static RUN: Array<RunState> = Array::with_max_entries(MAX_CPUS, BPF_F_MMAPABLE);
#[map]
static THREADS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TRACKED * 4, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
/// Per-CPU offsets (`__per_cpu_offset[cpu]`), learned once from a per-CPU array of o3's own;
/// entry MAX_CPUS is 1 once they are known.
#[map]
static PCPU_OFF: Array<u64> = Array::with_max_entries(MAX_CPUS + 1, 0);
/// The per-CPU array whose value addresses give the per-CPU offsets (its value is unused).
#[map]
static PCPU_PROBE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Kernel samples of the tree, at the sampling interval.
#[map]
static TICKS: RingBuf = RingBuf::with_byte_size(TICKS_BYTES, 0);
/// Calls of each program on each CPU (`CALL_*`): with the run-time statistics o3 samples now
/// and then, they give the programs' whole cost without timing every call.
#[map]
static CALLS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NR_CALLS, 0);
/// The root's tgid, for the bench's floor programs.
#[map]
static FLOOR_TGID: Array<u32> = Array::with_max_entries(1, 0);

/// Atomic read-modify-write on map memory (BPF_ATOMIC instructions, cpu v3).
///
/// SeqCst on purpose: every BPF atomic is a full barrier anyway, and with Relaxed (monotonic)
/// ordering this LLVM emits the non-fetching `lock +=` for a fetch-add whose result is used,
/// silently returning garbage (seen with LLVM 22; the integration tests catch it).
mod atomic {
    use core::intrinsics::{atomic_cxchg, atomic_xadd, atomic_xchg, AtomicOrdering};

    /// Adds `v` and returns the previous value.
    ///
    /// # Safety
    /// `p` must point to an aligned, live i64/u64 in map memory.
    #[inline(always)]
    pub unsafe fn add<T: Copy>(p: *mut T, v: T) -> T {
        atomic_xadd::<T, T, { AtomicOrdering::SeqCst }>(p, v)
    }

    /// Stores `v` and returns the previous value.
    ///
    /// # Safety
    /// As for [`add`].
    #[inline(always)]
    pub unsafe fn swap(p: *mut i64, v: i64) -> i64 {
        atomic_xchg::<i64, { AtomicOrdering::SeqCst }>(p, v)
    }

    /// Stores `new` if the value is `old`; returns the value seen and whether it stored.
    ///
    /// # Safety
    /// As for [`add`].
    #[inline(always)]
    pub unsafe fn cas(p: *mut i64, old: i64, new: i64) -> (i64, bool) {
        atomic_cxchg::<i64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(p, old, new)
    }
}

/// Counts one call of program `slot` on this CPU (no atomics: only this CPU writes it, and
/// programs do not nest on one CPU).
#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = CALLS.get_ptr_mut(slot) {
        // SAFETY: this CPU's value of the per-CPU array.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn offsets() -> Offsets {
    // SAFETY: OFFSETS is a plain global in .rodata, written by the loader before load; a
    // volatile read keeps the compiler from folding the placeholder values.
    unsafe { core::ptr::read_volatile(&raw const OFFSETS) }
}

#[inline(always)]
fn raw() -> RawTp {
    // SAFETY: as for `offsets`.
    unsafe { core::ptr::read_volatile(&raw const RAW) }
}

#[inline(always)]
fn read<T>(ctx: &TracePointContext, off: u32) -> Result<T, i64> {
    if off == NO_FIELD {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read of the tracepoint record at an offset taken from its format file.
    unsafe { ctx.read_at::<T>(off as usize) }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn current() -> (u32, u32) {
    let pt = bpf_get_current_pid_tgid();
    ((pt >> 32) as u32, pt as u32)
}

/// Reserves, fills and submits an event; `fill` completes it before submission.
#[inline(always)]
fn emit(kind: u32, pid: u32, aux: u32, value: i64, now: u64, fill: impl FnOnce(*mut Event)) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        if let Some(tree) = TREE.get_ptr_mut(0) {
            // SAFETY: pointer into the array map's value, valid for the program's run.
            unsafe { atomic::add(&raw mut (*tree).events_lost, 1) };
        }
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at reserved ring-buffer memory of size_of::<Event>().
    unsafe {
        (*ev).t_ns = now;
        (*ev).value = value;
        (*ev).kind = kind;
        (*ev).pid = pid;
        (*ev).aux = aux;
        (*ev)._pad = 0;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*ev).filename[0] = 0;
    }
    fill(ev);
    entry.submit(0);
}

// ---------------------------------------------------------------- process tracking

#[tracepoint]
pub fn o3_newtask(ctx: TracePointContext) -> u32 {
    count(CALL_NEWTASK);
    let _ = try_newtask(&ctx);
    0
}

fn try_newtask(ctx: &TracePointContext) -> Result<(), i64> {
    let o = offsets();
    let flags: u64 = read(ctx, o.newtask_clone_flags)?;
    let (parent, _) = current();
    // SAFETY: map lookup result is only read.
    if unsafe { TRACKED.get(&parent) }.is_none() {
        return Ok(());
    }
    let child: i32 = read(ctx, o.newtask_pid)?;
    on_newtask(parent, child as u32, flags)
}

/// Raw `task_newtask(struct task_struct *task, unsigned long clone_flags)`.
#[raw_tracepoint(tracepoint = "task_newtask")]
pub fn o3_newtask_raw(ctx: RawTracePointContext) -> i32 {
    count(CALL_NEWTASK);
    let _ = try_newtask_raw(&ctx);
    0
}

fn try_newtask_raw(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (parent, _) = current();
    // SAFETY: map lookup result is only read.
    if unsafe { TRACKED.get(&parent) }.is_none() {
        return Ok(());
    }
    let (task, flags) = (raw_arg(ctx, 0), raw_arg(ctx, 1));
    let child = task_pid(task, &raw())?;
    on_newtask(parent, child, flags)
}

#[inline(always)]
fn on_newtask(parent: u32, child: u32, flags: u64) -> Result<(), i64> {
    // Known from its first slice on, so its in-flight CPU time is visible before it is first
    // switched out.
    let tgid = if flags & CLONE_THREAD != 0 {
        parent
    } else {
        child
    };
    let _ = THREADS.insert(&child, &tgid, 0);
    if flags & CLONE_THREAD != 0 {
        return Ok(());
    }
    let entry = Tracked {
        parent,
        flags: 0,
        dead_tid: 0,
        _pad: 0,
    };
    TRACKED.insert(&child, &entry, 0)?;
    emit(EVENT_FORK, child, parent, 0, now_ns(), |_| {});
    Ok(())
}

#[tracepoint]
pub fn o3_exec(ctx: TracePointContext) -> u32 {
    count(CALL_EXEC);
    let _ = try_exec(&ctx);
    0
}

fn try_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let o = offsets();
    let (tgid, _) = current();
    if TRACKED.get_ptr_mut(&tgid).is_none() {
        return Ok(());
    }
    let old_pid: i32 = read(ctx, o.exec_old_pid).unwrap_or(0);
    let loc: u32 = read(ctx, o.exec_filename).unwrap_or(0);
    let off = (loc & 0xffff) as usize;
    // SAFETY: the __data_loc offset points inside the tracepoint record.
    let name = (off != 0).then(|| unsafe { (ctx.as_ptr() as *const u8).add(off) });
    on_exec(tgid, old_pid as u32, name)
}

/// Raw `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn o3_exec_raw(ctx: RawTracePointContext) -> i32 {
    count(CALL_EXEC);
    let _ = try_exec_raw(&ctx);
    0
}

fn try_exec_raw(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (tgid, _) = current();
    if TRACKED.get_ptr_mut(&tgid).is_none() {
        return Ok(());
    }
    let (old_pid, bprm) = (raw_arg(ctx, 1) as u32, raw_arg(ctx, 2));
    let r = raw();
    // SAFETY: reads `bprm->filename` (a kernel pointer) without faulting.
    let name =
        unsafe { bpf_probe_read_kernel((bprm + u64::from(r.binprm_filename)) as *const u64) }
            .ok()
            .filter(|p| *p != 0)
            .map(|p| p as *const u8);
    on_exec(tgid, old_pid, name)
}

/// `name`: the executed file's name (a NUL-terminated kernel string).
#[inline(always)]
fn on_exec(tgid: u32, old_pid: u32, name: Option<*const u8>) -> Result<(), i64> {
    let Some(t) = TRACKED.get_ptr_mut(&tgid) else {
        return Ok(());
    };
    // SAFETY: pointer into the hash map's value, valid for the program's run.
    unsafe { (*t).flags &= !TRACK_WAIT_EXEC };
    emit(EVENT_EXEC, tgid, old_pid, 0, now_ns(), |ev| {
        if let Some(src) = name {
            // SAFETY: copies a kernel string into the reserved event's buffer, without
            // faulting.
            unsafe {
                let _ = bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename);
            }
        }
    });
    Ok(())
}

#[tracepoint]
pub fn o3_exit(ctx: TracePointContext) -> u32 {
    count(CALL_EXIT);
    let _ = try_exit(&ctx);
    0
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let o = offsets();
    let (tgid, tid) = current();
    if TRACKED.get_ptr_mut(&tgid).is_none() {
        return Ok(());
    }
    let group_dead = if o.exit_group_dead == NO_FIELD {
        tid == tgid
    } else {
        read::<u8>(ctx, o.exit_group_dead)? != 0
    };
    on_exit(tgid, tid, group_dead)
}

/// Raw `sched_process_exit(struct task_struct *p[, bool group_dead])` (the second argument
/// since Linux 6.16).
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn o3_exit_raw(ctx: RawTracePointContext) -> i32 {
    count(CALL_EXIT);
    let _ = try_exit_raw(&ctx);
    0
}

fn try_exit_raw(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (tgid, tid) = current();
    if TRACKED.get_ptr_mut(&tgid).is_none() {
        return Ok(());
    }
    let group_dead = if raw().exit_group_dead != 0 {
        raw_arg(ctx, 1) & 0xff != 0
    } else {
        tid == tgid
    };
    on_exit(tgid, tid, group_dead)
}

#[inline(always)]
fn on_exit(tgid: u32, tid: u32, group_dead: bool) -> Result<(), i64> {
    let Some(t) = TRACKED.get_ptr_mut(&tgid) else {
        return Ok(());
    };
    if group_dead {
        // SAFETY: pointer into the hash map's value, valid for the program's run.
        unsafe { (*t).dead_tid = tid };
        emit(EVENT_EXIT, tgid, tid, 0, now_ns(), |_| {});
    }
    Ok(())
}

// ---------------------------------------------------------------- CPU time

#[tracepoint]
pub fn o3_switch(ctx: TracePointContext) -> u32 {
    count(CALL_SWITCH);
    let _ = try_switch(&ctx);
    0
}

fn try_switch(ctx: &TracePointContext) -> Result<(), i64> {
    let o = offsets();
    let state: i64 = read(ctx, o.switch_prev_state).unwrap_or(0);
    let next: i32 = read(ctx, o.switch_next_pid).unwrap_or(0);
    on_switch(state & TASK_STATE_DEAD_MASK != 0, Next::Tid(next as u32))
}

/// Raw `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)` (Linux 5.18 and later).
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn o3_switch_raw(ctx: RawTracePointContext) -> i32 {
    count(CALL_SWITCH);
    let _ = try_switch_raw(&ctx);
    0
}

fn try_switch_raw(ctx: &RawTracePointContext) -> Result<(), i64> {
    let (next, state) = (raw_arg(ctx, 2), raw_arg(ctx, 3) as u32);
    let r = raw();
    // The process of the task switched in, from the task itself: tracked or not.
    // SAFETY: reads `next->tgid` without faulting.
    let tgid = unsafe { bpf_probe_read_kernel((next + u64::from(r.task_tgid)) as *const i32) }
        .map_or(0, |t| t as u32);
    // SAFETY: map lookup result is only tested.
    let next_tgid = if tgid != 0 && unsafe { TRACKED.get(&tgid) }.is_some() {
        tgid
    } else {
        0
    };
    // The raw argument is the task's own state (TASK_DEAD for a task that exits), not the
    // classic record's report encoding.
    let dead = state & TASK_DEAD != 0;
    on_switch(dead, Next::Tgid(next_tgid))
}

/// The task switched in: its tid (classic: its process is looked up in THREADS) or its
/// process, known already (raw).
enum Next {
    Tid(u32),
    Tgid(u32),
}

/// `dead`: the task switched out (current) exits; `next`: the task switched in.
#[inline(always)]
fn on_switch(dead: bool, next: Next) -> Result<(), i64> {
    let now = now_ns();
    // SAFETY: bpf_get_smp_processor_id has no preconditions.
    let cpu = unsafe { aya_ebpf::helpers::gen::bpf_get_smp_processor_id() };
    let run = RUN.get_ptr_mut(cpu).ok_or(-1)?;
    // SAFETY: per-CPU array value of this CPU; only this program on this CPU writes it, and
    // tracepoint programs do not nest on one CPU.
    let since = unsafe { (*run).since_ns };
    let mut slice = 0u64;
    let (tgid, tid) = current();
    if tgid != 0 {
        if let Some(t) = TRACKED.get_ptr_mut(&tgid) {
            if since != 0 && now > since {
                slice = now - since;
                match PROC_CPU.get_ptr_mut(&tgid) {
                    // SAFETY: per-CPU value of this CPU.
                    Some(c) => unsafe { *c += slice },
                    None => {
                        let _ = PROC_CPU.insert(&tgid, &slice, 0);
                    }
                }
            }
            if dead {
                let _ = THREADS.remove(&tid);
                // SAFETY: pointer into the hash map's value, valid for the program's run.
                if unsafe { (*t).dead_tid } == tid {
                    let _ = TRACKED.remove(&tgid);
                }
            } else {
                // SAFETY: only whether the entry exists is looked at, not the value.
                let absent = unsafe { THREADS.get(&tid) }.is_none();
                if absent {
                    let _ = THREADS.insert(&tid, &tgid, 0);
                }
            }
        }
    }
    let next_tgid = match next {
        // SAFETY: map lookup result is copied.
        Next::Tid(tid) => unsafe { THREADS.get(&tid) }.copied().unwrap_or(0),
        Next::Tgid(tgid) => tgid,
    };
    // Sequence-locked update (see `RunState`): volatile stores keep this order, which is the
    // order a reader on another CPU observes them in.
    // SAFETY: `run` is this CPU's value; all pointers are into it.
    unsafe {
        let seq = (*run).seq_begin.wrapping_add(1);
        write_volatile(&raw mut (*run).seq_begin, seq);
        write_volatile(&raw mut (*run).total_ns, (*run).total_ns + slice);
        write_volatile(&raw mut (*run).since_ns, now);
        write_volatile(&raw mut (*run).tgid, next_tgid);
        write_volatile(&raw mut (*run).seq_end, seq);
    }
    Ok(())
}

// ---------------------------------------------------------------- RSS

#[tracepoint]
pub fn o3_rss(ctx: TracePointContext) -> u32 {
    count(CALL_RSS);
    let _ = try_rss(&ctx);
    0
}

/// The rss_stat record prefix, copied with one helper call (this program runs on every RSS
/// change of every process on the machine, so each helper call counts).
#[repr(C, align(8))]
struct Record([u8; RSS_RECORD_MAX as usize + 8]);

impl Record {
    /// Field at a format-file offset; the masks keep the access aligned and inside the buffer
    /// for the verifier (real offsets are naturally aligned and below RSS_RECORD_MAX).
    #[inline(always)]
    fn u32_at(&self, off: u32) -> u32 {
        let off = (off & (RSS_RECORD_MAX - 4)) as usize;
        // SAFETY: aligned 4-byte read inside the buffer.
        unsafe { core::ptr::read(self.0.as_ptr().add(off).cast::<u32>()) }
    }

    #[inline(always)]
    fn i64_at(&self, off: u32) -> i64 {
        let off = (off & (RSS_RECORD_MAX - 8)) as usize;
        // SAFETY: aligned 8-byte read inside the buffer.
        unsafe { core::ptr::read(self.0.as_ptr().add(off).cast::<i64>()) }
    }
}

fn try_rss(ctx: &TracePointContext) -> Result<(), i64> {
    let o = offsets();
    let mut rec = Record([0; RSS_RECORD_MAX as usize + 8]);
    let len = (o.rss_len as usize).min(RSS_RECORD_MAX as usize);
    // SAFETY: copies the first `len` bytes of the tracepoint record into the stack buffer.
    unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, &mut rec.0[..len])? };
    let member = rec.u32_at(o.rss_member) as i32;
    if !(0..NR_RSS as i32).contains(&member) {
        return Ok(());
    }
    let k = (member as u32 & 3) as usize;
    let mm_id = u64::from(rec.u32_at(o.rss_mm_id));
    let size = rec.i64_at(o.rss_size);

    if let Some(mm) = MMS.get_ptr_mut(&mm_id) {
        apply(mm, k, size, &o);
        if size == 0 {
            forget_if_empty(mm_id, mm);
        }
        return Ok(());
    }
    let curr = rec.u32_at(o.rss_curr);
    if curr == 0 {
        note_pending(mm_id, k, size, now_ns());
        return Ok(());
    }
    let (tgid, _) = current();
    // SAFETY: map lookup result is only read.
    let Some(t) = (unsafe { TRACKED.get(&tgid) }) else {
        return Ok(());
    };
    if t.flags & TRACK_WAIT_EXEC != 0 {
        return Ok(());
    }
    // First event of this mm from a tracked process: attribute it, then replay what is known.
    let mut state = MmState {
        owner: tgid,
        _pad: 0,
        cur: [0; NR_RSS],
        peak: 0,
        peak_ns: 0,
    };
    let mut replay_seed = Pending::default();
    let mut newer_than = 0u64;
    // SAFETY: map lookup result is copied.
    if let Some(seed) = unsafe { SEEDS.get(&tgid) } {
        let seed = *seed;
        let _ = SEEDS.remove(&tgid);
        newer_than = seed.t_ns;
        if seed.add_to_tree == 0 {
            // Already in the tree totals (user space wrote them before tracking began).
            state.cur = masked(&seed);
        } else {
            replay_seed = seed;
        }
    }
    let _ = MMS.insert(&mm_id, &state, u64::from(BPF_NOEXIST));
    let mm = MMS.get_ptr_mut(&mm_id).ok_or(-1)?;
    replay(mm, &replay_seed, &o);
    // SAFETY: map lookup result is copied.
    if let Some(p) = unsafe { PENDING.get(&(mm_id as u32)) } {
        let p = *p;
        let _ = PENDING.remove(&(mm_id as u32));
        if p.t_ns >= newer_than {
            replay(mm, &p, &o);
        }
    }
    apply(mm, k, size, &o);
    Ok(())
}

#[inline(always)]
fn masked(p: &Pending) -> [i64; NR_RSS] {
    let mut cur = [0i64; NR_RSS];
    let mut k = 0;
    while k < NR_RSS {
        if p.mask & (1 << k) != 0 {
            cur[k] = p.cur[k];
        }
        k += 1;
    }
    cur
}

#[inline(always)]
fn replay(mm: *mut MmState, p: &Pending, o: &Offsets) {
    let mut k = 0;
    while k < NR_RSS {
        if p.mask & (1 << k) != 0 {
            apply(mm, k, p.cur[k], o);
        }
        k += 1;
    }
}

fn note_pending(mm_id: u64, k: usize, size: i64, now: u64) {
    let mm_id = mm_id as u32;
    match PENDING.get_ptr_mut(&mm_id) {
        // SAFETY: pointer into the LRU map's value, valid for the program's run.
        Some(p) => unsafe {
            (*p).cur[k & 3] = size;
            (*p).mask |= 1 << (k & 3);
            (*p).t_ns = now;
        },
        None => {
            let mut p = Pending {
                mask: 1 << (k & 3),
                add_to_tree: 0,
                t_ns: now,
                cur: [0; NR_RSS],
            };
            p.cur[k & 3] = size;
            let _ = PENDING.insert(&mm_id, &p, 0);
        }
    }
}

/// An mm whose counters all reached zero is being torn down: its peak goes to its owner's
/// record, and it is forgotten so a new mm that happens to get the same id is not mistaken
/// for it.
#[inline(always)]
fn forget_if_empty(mm_id: u64, mm: *mut MmState) {
    // SAFETY: pointer into the hash map's value, valid for the program's run.
    let m = unsafe { *mm };
    if m.cur[0] == 0 && m.cur[1] == 0 && m.cur[2] == 0 && m.cur[3] == 0 {
        raise_proc_peak(m.owner, m.peak, m.peak_ns);
        let _ = MMS.remove(&mm_id);
    }
}

/// Sets one counter of an mm to its new absolute value and moves the tree totals by the
/// difference. The exchange makes concurrent updates of the same counter telescope, so the
/// totals always equal the sum of what is stored.
#[inline(always)]
fn apply(mm: *mut MmState, k: usize, size: i64, o: &Offsets) {
    let k = k & 3;
    // SAFETY: `mm` points into the MMS map value, aligned for i64.
    let old = unsafe { atomic::swap(&raw mut (*mm).cur[k], size) };
    let delta = size - old;
    if delta == 0 {
        return;
    }
    let Some(tree) = TREE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `tree` points into the array map's single value, aligned for i64.
    unsafe { atomic::add(&raw mut (*tree).cur[k], delta) };
    if k == RSS_SWAP {
        return;
    }
    // SAFETY: as above.
    let rss = unsafe { atomic::add(&raw mut (*tree).rss, delta) } + delta;
    if delta < 0 {
        return;
    }
    let now = now_ns();
    // SAFETY: `mm` points into the MMS map value. Two CPUs racing on the same mm can only
    // lose the smaller of two concurrent values.
    unsafe {
        let mm_rss = (*mm).cur[RSS_FILE] + (*mm).cur[RSS_ANON] + (*mm).cur[RSS_SHMEM];
        if mm_rss > (*mm).peak {
            (*mm).peak = mm_rss;
            (*mm).peak_ns = now;
        }
        raise_tree_peak(tree, rss, now, (*mm).owner, o);
    }
}

#[inline(always)]
fn raise_proc_peak(owner: u32, rss: i64, now: u64) {
    match PROC_PEAK.get_ptr_mut(&owner) {
        // SAFETY: pointer into the hash map's value. Two CPUs racing here can only lose the
        // smaller of two concurrent values of the same process.
        Some(p) => unsafe {
            if rss > (*p).rss_peak {
                (*p).rss_peak = rss;
                (*p).rss_peak_ns = now;
            }
        },
        None => {
            let p = ProcPeak {
                rss_peak: rss,
                rss_peak_ns: now,
            };
            let _ = PROC_PEAK.insert(&owner, &p, 0);
        }
    }
}

#[inline(always)]
fn raise_tree_peak(tree: *mut Tree, rss: i64, now: u64, owner: u32, o: &Offsets) {
    // SAFETY: `tree` points into the array map's single value, aligned for i64.
    let peak = unsafe { &raw mut (*tree).rss_peak };
    // SAFETY: as above.
    let mut seen = unsafe { core::ptr::read_volatile(peak) };
    let mut tries = 0;
    let mut raised = false;
    while tries < 8 {
        if rss <= seen {
            return;
        }
        // SAFETY: as above.
        let (v, stored) = unsafe { atomic::cas(peak, seen, rss) };
        if stored {
            raised = true;
            break;
        }
        seen = v;
        tries += 1;
    }
    if !raised {
        return;
    }
    // SAFETY: as above; the timestamp belongs to the value this CPU installed.
    unsafe { (*tree).rss_peak_ns = now };
    let step = o.peak_event_step_bytes as i64;
    // SAFETY: as above.
    let last = unsafe { &raw mut (*tree).last_event_peak };
    // SAFETY: as above.
    let prev = unsafe { core::ptr::read_volatile(last) };
    // SAFETY: as above.
    if rss >= prev + step && unsafe { atomic::cas(last, prev, rss) }.1 {
        emit(EVENT_PEAK, owner, 0, rss, now, |_| {});
    }
}

// ---------------------------------------------------------------- RSS, raw tracepoint
//
// The classic tracepoint above gets a record the kernel filled before any program runs: a
// keyed hash of the mm and an exact sum of the counter over all CPUs under the counter's lock,
// paid on every RSS change of every process on the machine. The raw tracepoint hands over
// (mm, member) only. Untracked mms leave after one hash lookup; for tracked ones the program
// sums the counter itself: `count` plus each CPU's part, read at `counters` +
// `__per_cpu_offset[cpu]`. The per-CPU offsets are learned once from a per-CPU array of o3's
// own (the address of its value on each CPU less its per-CPU base pointer).

/// `PCPU_OFF` filled in, or why not.
#[inline(always)]
fn pcpu_ready(r: &RawTp) -> Result<(), i64> {
    let ready = PCPU_OFF.get_ptr_mut(MAX_CPUS).ok_or(-1)?;
    // SAFETY: pointer into the array map's value.
    if unsafe { core::ptr::read_volatile(ready) } != 0 {
        return Ok(());
    }
    // The map's kernel address, as a number: through the stack, since the verifier forbids
    // arithmetic on map pointers.
    let map = &raw const PCPU_PROBE as u64;
    let map = launder(&map)?;
    // SAFETY: bpf_probe_read_kernel reads kernel memory without faulting.
    let pptr = unsafe { bpf_probe_read_kernel((map + u64::from(r.array_pptrs)) as *const u64) }?;
    let key = 0u32;
    let mut cpu = 0u32;
    while cpu < MAX_CPUS {
        if cpu >= r.ncpus {
            break;
        }
        // SAFETY: helper call with a valid map and key; the result is checked for NULL.
        let v = unsafe {
            aya_ebpf::helpers::gen::bpf_map_lookup_percpu_elem(
                &raw const PCPU_PROBE as *mut core::ffi::c_void,
                (&raw const key).cast::<core::ffi::c_void>(),
                cpu,
            )
        } as u64;
        if v == 0 {
            return Err(-1);
        }
        let v = launder(&v)?;
        let slot = PCPU_OFF.get_ptr_mut(cpu).ok_or(-1)?;
        // SAFETY: pointer into the array map's value.
        unsafe { *slot = v.wrapping_sub(pptr) };
        cpu += 1;
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(ready, 1) };
    Ok(())
}

/// Argument `i` of a raw tracepoint (its context is an array of u64 arguments).
#[inline(always)]
fn raw_arg(ctx: &RawTracePointContext, i: usize) -> u64 {
    // SAFETY: the verifier checks the context read; every caller reads an argument the
    // tracepoint has (its count is checked against the kernel's BTF before load).
    unsafe { *(ctx.as_ptr() as *const u64).add(i) }
}

/// `task->pid` (the thread id).
#[inline(always)]
fn task_pid(task: u64, r: &RawTp) -> Result<u32, i64> {
    // SAFETY: bpf_probe_read_kernel reads kernel memory without faulting.
    let pid = unsafe { bpf_probe_read_kernel((task + u64::from(r.task_pid)) as *const i32) }?;
    Ok(pid as u32)
}

/// A pointer's value as a plain number (copied through memory, so the verifier sees a scalar).
#[inline(always)]
fn launder(v: &u64) -> Result<u64, i64> {
    // SAFETY: reads 8 bytes of this program's stack.
    unsafe { bpf_probe_read_kernel(v as *const u64) }
}

/// The current task's mm.
#[inline(always)]
fn current_mm(r: &RawTp) -> Result<u64, i64> {
    // SAFETY: the current task is valid while the program runs; the read cannot fault.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((task + u64::from(r.task_mm)) as *const u64) }
}

/// The exact value of `mm->rss_stat[k]` in bytes. A fold of one CPU's part into `count` (done
/// under the counter's lock, `count` first) could be seen half-done: the copy is retried while
/// the lock is held or `count` moved during the sum.
#[inline(always)]
fn exact(mm: u64, k: usize, r: &RawTp) -> Result<i64, i64> {
    let fbc = mm + u64::from(r.mm_rss_stat) + (k as u64 & 3) * u64::from(r.counter_size);
    let mut tries = 0;
    while tries < 2 {
        tries += 1;
        let mut head = [0u64; COUNTER_READ_MAX as usize / 8];
        // SAFETY: copies the counter's head (lock, count, counters) from kernel memory.
        unsafe { bpf_probe_read_kernel_buf(fbc as *const u8, as_bytes(&mut head))? };
        let word = |off: u32| head[((off & (COUNTER_READ_MAX - 8)) / 8) as usize];
        let lock = word(r.counter_lock & !7) >> ((r.counter_lock & 4) * 8);
        if lock as u32 != 0 {
            continue;
        }
        let count = word(r.counter_count) as i64;
        let counters = word(r.counter_counters);
        let mut sum = count;
        let mut cpu = 0u32;
        while cpu < MAX_CPUS {
            if cpu >= r.ncpus {
                break;
            }
            let off = PCPU_OFF.get(cpu).copied().ok_or(-1)?;
            // SAFETY: reads one CPU's part of the counter; cannot fault.
            let part = unsafe { bpf_probe_read_kernel(counters.wrapping_add(off) as *const i32) }?;
            sum += i64::from(part);
            cpu += 1;
        }
        // SAFETY: as above.
        let again =
            unsafe { bpf_probe_read_kernel((fbc + u64::from(r.counter_count)) as *const i64) }?;
        if again == count {
            return Ok(if sum < 0 {
                0
            } else {
                sum << (r.page_shift & 31)
            });
        }
    }
    Err(-1)
}

#[inline(always)]
fn as_bytes(words: &mut [u64; COUNTER_READ_MAX as usize / 8]) -> &mut [u8] {
    // SAFETY: a u64 array viewed as its bytes.
    unsafe {
        core::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), COUNTER_READ_MAX as usize)
    }
}

/// Starts tracking `mm` for `tgid` with all four counters read exactly.
#[inline(always)]
fn first_sight(mm: u64, tgid: u32, r: &RawTp, o: &Offsets) -> Result<(), i64> {
    pcpu_ready(r)?;
    let mut state = MmState {
        owner: tgid,
        _pad: 0,
        cur: [0; NR_RSS],
        peak: 0,
        peak_ns: 0,
    };
    // SAFETY: map lookup result is copied.
    if let Some(seed) = unsafe { SEEDS.get(&tgid) } {
        let seed = *seed;
        let _ = SEEDS.remove(&tgid);
        if seed.add_to_tree == 0 {
            // Already in the tree totals (user space wrote them before tracking began).
            state.cur = masked(&seed);
        }
    }
    let _ = MMS.insert(&mm, &state, u64::from(BPF_NOEXIST));
    let p = MMS.get_ptr_mut(&mm).ok_or(-1)?;
    let mut k = 0;
    while k < NR_RSS {
        if let Ok(v) = exact(mm, k, r) {
            apply(p, k, v, o);
        }
        k += 1;
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "rss_stat")]
pub fn o3_rss_raw(ctx: RawTracePointContext) -> i32 {
    count(CALL_RSS);
    let _ = try_rss_raw(&ctx);
    0
}

fn try_rss_raw(ctx: &RawTracePointContext) -> Result<(), i64> {
    // rss_stat(struct mm_struct *mm, int member).
    let (mm, member) = (raw_arg(ctx, 0), raw_arg(ctx, 1) as i32);
    if !(0..NR_RSS as i32).contains(&member) {
        return Ok(());
    }
    let k = member as usize & 3;
    let r = raw();
    if let Some(st) = MMS.get_ptr_mut(&mm) {
        if r.mode == RSS_RAW_LOOKUP {
            return Ok(());
        }
        let v = exact(mm, k, &r)?;
        if r.mode == RSS_RAW_READ {
            return Ok(());
        }
        let o = offsets();
        apply(st, k, v, &o);
        // All four counters reach zero only on a change to zero.
        if v == 0 {
            forget_if_empty(mm, st);
        }
        return Ok(());
    }
    let (tgid, _) = current();
    // SAFETY: map lookup result is only read.
    let Some(t) = (unsafe { TRACKED.get(&tgid) }) else {
        return Ok(());
    };
    if t.flags & TRACK_WAIT_EXEC != 0 {
        return Ok(());
    }
    // An mm being built by a tracked task for another (a fork's copy, exec's new image) is
    // read whole when it becomes its owner's: at exec, or at its owner's first change.
    if current_mm(&r)? != mm {
        return Ok(());
    }
    first_sight(mm, tgid, &r, &offsets())
}

// ---------------------------------------------------------------- kernel samples

/// A perf-event timer (cpu-clock on one CPU, period = the sampling interval) runs this: it
/// copies the tree totals and sums the CPU time of every CPU's slot, so samples at 1 ms cost
/// no user-space wake-up. Submitted without a wake-up; user space drains the ring at its own
/// cadence.
#[perf_event]
pub fn o3_tick(_ctx: PerfEventContext) -> u32 {
    count(CALL_TICK);
    let _ = try_tick();
    0
}

fn try_tick() -> Result<(), i64> {
    let r = raw();
    let tree = TREE.get_ptr_mut(0).ok_or(-1)?;
    let Some(mut entry) = TICKS.reserve::<KTick>(0) else {
        // SAFETY: pointer into the array map's value, aligned for u64.
        unsafe { atomic::add(&raw mut (*tree).ticks_lost, 1u64) };
        return Ok(());
    };
    let now = now_ns();
    let mut cpu_ns = 0u64;
    let mut cpu = 0u32;
    while cpu < MAX_CPUS {
        if cpu >= r.ncpus {
            break;
        }
        match RUN.get_ptr_mut(cpu) {
            Some(slot) if cpu_ns != u64::MAX => {
                cpu_ns = cpu_of(slot, now).map_or(u64::MAX, |v| cpu_ns + v);
            }
            _ => {}
        }
        cpu += 1;
    }
    let t = entry.as_mut_ptr();
    // SAFETY: `t` is the reserved entry; `tree` points into the array map's value. Each field
    // is loaded once; fields may be one update apart (as for a map lookup).
    unsafe {
        (*t).t_ns = now;
        let mut k = 0;
        while k < NR_RSS {
            (*t).cur[k] = core::ptr::read_volatile(&raw const (*tree).cur[k]);
            k += 1;
        }
        (*t).rss = core::ptr::read_volatile(&raw const (*tree).rss);
        (*t).rss_peak = core::ptr::read_volatile(&raw const (*tree).rss_peak);
        (*t).rss_peak_ns = core::ptr::read_volatile(&raw const (*tree).rss_peak_ns);
        (*t).cpu_ns = cpu_ns;
    }
    entry.submit(u64::from(aya_ebpf::bindings::BPF_RB_NO_WAKEUP));
    Ok(())
}

/// The tree's CPU time on one CPU at `now`, read under its sequence lock (see `RunState`);
/// None when three reads were all torn by context switches.
#[inline(always)]
fn cpu_of(slot: *mut RunState, now: u64) -> Option<u64> {
    let mut tries = 0;
    while tries < 3 {
        tries += 1;
        // SAFETY: `slot` points into the array map's value; loads in the lock's order.
        let (end, total, since, tgid, begin) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*slot).seq_end),
                core::ptr::read_volatile(&raw const (*slot).total_ns),
                core::ptr::read_volatile(&raw const (*slot).since_ns),
                core::ptr::read_volatile(&raw const (*slot).tgid),
                core::ptr::read_volatile(&raw const (*slot).seq_begin),
            )
        };
        if end == begin {
            let running = if tgid != 0 && since != 0 && now > since {
                now - since
            } else {
                0
            };
            return Some(total + running);
        }
    }
    None
}

// ---------------------------------------------------------------- bench floors

/// Floor of the classic tracepoint: the kernel fills the record, the program compares a pid.
#[tracepoint]
pub fn o3_floor_tp(_ctx: TracePointContext) -> u32 {
    count(CALL_RSS);
    floor();
    0
}

/// Floor of the raw tracepoint: the program compares a pid.
#[raw_tracepoint(tracepoint = "rss_stat")]
pub fn o3_floor_raw(_ctx: RawTracePointContext) -> i32 {
    count(CALL_RSS);
    floor();
    0
}

#[inline(always)]
fn floor() {
    let (tgid, _) = current();
    if let Some(root) = FLOOR_TGID.get_ptr_mut(0) {
        // SAFETY: pointer into the array map's value. The volatile read is the whole filter;
        // a real program would start its work where the pids match.
        let _ = unsafe { core::ptr::read_volatile(root) } == tgid;
    }
}

// ---------------------------------------------------------------- GPU memory (kprobes)
//
// amdgpu's VRAM and GTT managers allocate through `amdgpu_{vram,gtt}_mgr_new(man, tbo, place,
// res)` (0 on success) and free through `amdgpu_{vram,gtt}_mgr_del(man, res)`. The size of a
// new allocation is `tbo->base.size`, of a freed one `res->size` (the same value: TTM sets
// the second from the first); their offsets come from the kernel's BTF via GPU_OFFSETS. The
// entry probe of `_new` parks the size per thread, the return probe counts it only when the
// allocation succeeded. These are kprobes, unlike everything above: the loader attaches them
// only where the kernel has kprobes (not on the CI kernel).
//
// The accounting mirrors `GpuMemMirror::apply` in o3-user/src/telemetry/ebpf/gpu_mem.rs line
// for line (its unit tests drive it with recorded event sequences): change both together.

#[no_mangle]
static GPU_OFFSETS: GpuMemOffsets = GpuMemOffsets {
    tbo_size: 0,
    res_size: 0,
};

#[map]
static GPU_MEM: HashMap<u64, GpuMem> = HashMap::with_max_entries(MAX_GPU_MANAGERS, 0);
#[map]
static GPU_PENDING: LruHashMap<u32, GpuPending> = LruHashMap::with_max_entries(MAX_GPU_PENDING, 0);

#[inline(always)]
fn gpu_offsets() -> GpuMemOffsets {
    // SAFETY: GPU_OFFSETS is a plain global in .rodata, written by the loader before load; a
    // volatile read keeps the compiler from folding the placeholder values.
    unsafe { core::ptr::read_volatile(&raw const GPU_OFFSETS) }
}

/// The size_t at `base + off` in kernel memory; offset 0 means "unknown" (no BTF).
#[inline(always)]
fn read_kernel_size(base: u64, off: u32) -> Result<i64, i64> {
    if base == 0 || off == 0 {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel copies 8 bytes from a kernel address and returns an error
    // instead of faulting.
    let v = unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const u64) }?;
    Ok(v as i64)
}

#[kprobe]
pub fn o3_vram_new(ctx: ProbeContext) -> u32 {
    let _ = try_gpu_new(&ctx, GPU_MEM_KIND_VRAM);
    0
}

#[kretprobe]
pub fn o3_vram_new_ret(ctx: RetProbeContext) -> u32 {
    let _ = try_gpu_new_ret(&ctx);
    0
}

#[kprobe]
pub fn o3_vram_del(ctx: ProbeContext) -> u32 {
    let _ = try_gpu_del(&ctx, GPU_MEM_KIND_VRAM);
    0
}

#[kprobe]
pub fn o3_gtt_new(ctx: ProbeContext) -> u32 {
    let _ = try_gpu_new(&ctx, GPU_MEM_KIND_GTT);
    0
}

#[kretprobe]
pub fn o3_gtt_new_ret(ctx: RetProbeContext) -> u32 {
    let _ = try_gpu_new_ret(&ctx);
    0
}

#[kprobe]
pub fn o3_gtt_del(ctx: ProbeContext) -> u32 {
    let _ = try_gpu_del(&ctx, GPU_MEM_KIND_GTT);
    0
}

/// Mirror: `GpuMemEvent::New`.
fn try_gpu_new(ctx: &ProbeContext, kind: u32) -> Result<(), i64> {
    let man: u64 = ctx.arg(0).ok_or(-1)?;
    let tbo: u64 = ctx.arg(1).ok_or(-1)?;
    let (_, tid) = current();
    let Ok(size) = read_kernel_size(tbo, gpu_offsets().tbo_size) else {
        // Not in the mirror (no such event): forget a stale entry left by a missed return, so
        // this call's return cannot count it.
        let _ = GPU_PENDING.remove(&tid);
        return Ok(());
    };
    let p = GpuPending {
        man,
        size: size as u64,
        kind,
        _pad: 0,
    };
    GPU_PENDING.insert(&tid, &p, 0)
}

/// Mirror: `GpuMemEvent::NewRet`.
fn try_gpu_new_ret(ctx: &RetProbeContext) -> Result<(), i64> {
    let (_, tid) = current();
    // SAFETY: map lookup result is copied.
    let Some(p) = (unsafe { GPU_PENDING.get(&tid) }).copied() else {
        return Ok(());
    };
    let _ = GPU_PENDING.remove(&tid);
    let ret: u64 = ctx.ret().ok_or(-1)?;
    // `int` return value: only the low 32 bits are defined.
    if ret as u32 != 0 {
        return Ok(());
    }
    let g = gpu_manager(p.man, p.kind)?;
    let size = p.size as i64;
    // SAFETY: `g` points into the GPU_MEM map value, aligned for i64/u64.
    let cur = unsafe { atomic::add(&raw mut (*g).cur, size) } + size;
    // SAFETY: as above.
    unsafe { atomic::add(&raw mut (*g).allocs, 1u64) };
    raise_gpu_peak(g, cur, now_ns());
    Ok(())
}

/// Mirror: `GpuMemEvent::Del`.
fn try_gpu_del(ctx: &ProbeContext, kind: u32) -> Result<(), i64> {
    let man: u64 = ctx.arg(0).ok_or(-1)?;
    let res: u64 = ctx.arg(1).ok_or(-1)?;
    let size = read_kernel_size(res, gpu_offsets().res_size)?;
    let g = gpu_manager(man, kind)?;
    // SAFETY: `g` points into the GPU_MEM map value, aligned for i64/u64.
    let old = unsafe { atomic::add(&raw mut (*g).cur, -size) };
    // SAFETY: as above.
    unsafe { atomic::add(&raw mut (*g).frees, 1u64) };
    let new = old - size;
    if new < 0 {
        // Freed memory allocated before attach: give back the part below zero. Concurrent
        // frees each give back their own part, so the sum telescopes to the clamped value.
        let excess = if size < -new { size } else { -new };
        // SAFETY: as above.
        let cur = unsafe { atomic::add(&raw mut (*g).cur, excess) } + excess;
        // SAFETY: as above.
        unsafe { atomic::add(&raw mut (*g).clamped, 1u64) };
        raise_gpu_peak(g, cur, now_ns());
    }
    Ok(())
}

/// The manager's entry, created on first sight with its kind.
#[inline(always)]
fn gpu_manager(man: u64, kind: u32) -> Result<*mut GpuMem, i64> {
    if let Some(g) = GPU_MEM.get_ptr_mut(&man) {
        return Ok(g);
    }
    let fresh = GpuMem {
        kind,
        ..GpuMem::default()
    };
    let _ = GPU_MEM.insert(&man, &fresh, u64::from(BPF_NOEXIST));
    GPU_MEM.get_ptr_mut(&man).ok_or(-1)
}

/// Same compare-and-swap pattern as `raise_tree_peak`.
#[inline(always)]
fn raise_gpu_peak(g: *mut GpuMem, cur: i64, now: u64) {
    // SAFETY: `g` points into the GPU_MEM map value, aligned for i64.
    let peak = unsafe { &raw mut (*g).peak };
    // SAFETY: as above.
    let mut seen = unsafe { core::ptr::read_volatile(peak) };
    let mut tries = 0;
    while tries < 8 {
        if cur <= seen {
            return;
        }
        // SAFETY: as above.
        let (v, stored) = unsafe { atomic::cas(peak, seen, cur) };
        if stored {
            // SAFETY: as above; the timestamp belongs to the value this CPU installed.
            unsafe { (*g).peak_ns = now };
            return;
        }
        seen = v;
        tries += 1;
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects programs with reachable loops without exit; panics cannot
    // happen in these programs (all indexing is masked), so this is never reached.
    unsafe { core::hint::unreachable_unchecked() }
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
