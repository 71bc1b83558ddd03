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
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes,
    },
    macros::{kprobe, kretprobe, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
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

#[map]
static TRACKED: HashMap<u32, Tracked> = HashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
static MMS: HashMap<u32, MmState> = HashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
static PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(MAX_PENDING, 0);
#[map]
static SEEDS: HashMap<u32, Pending> = HashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
static PROC_PEAK: HashMap<u32, ProcPeak> = HashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
static TREE: Array<Tree> = Array::with_max_entries(1, 0);
#[map]
static PROC_CPU: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
static RUN: PerCpuArray<RunState> = PerCpuArray::with_max_entries(1, 0);
#[map]
static THREADS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TRACKED * 4, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

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

#[inline(always)]
fn offsets() -> Offsets {
    // SAFETY: OFFSETS is a plain global in .rodata, written by the loader before load; a
    // volatile read keeps the compiler from folding the placeholder values.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
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
            unsafe { atomic::add(&mut (*tree).events_lost, 1) };
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
    let child = child as u32;
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
    let _ = try_exec(&ctx);
    0
}

fn try_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let o = offsets();
    let (tgid, _) = current();
    let Some(t) = TRACKED.get_ptr_mut(&tgid) else {
        return Ok(());
    };
    // SAFETY: pointer into the hash map's value, valid for the program's run.
    unsafe { (*t).flags &= !TRACK_WAIT_EXEC };
    let old_pid: i32 = read(ctx, o.exec_old_pid).unwrap_or(0);
    let loc: u32 = read(ctx, o.exec_filename).unwrap_or(0);
    let off = (loc & 0xffff) as usize;
    emit(EVENT_EXEC, tgid, old_pid as u32, 0, now_ns(), |ev| {
        if off != 0 {
            // SAFETY: the __data_loc offset points inside the tracepoint record; the
            // destination is the reserved event's buffer.
            unsafe {
                let src = (ctx.as_ptr() as *const u8).add(off);
                let _ = bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename);
            }
        }
    });
    Ok(())
}

#[tracepoint]
pub fn o3_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let o = offsets();
    let (tgid, tid) = current();
    let Some(t) = TRACKED.get_ptr_mut(&tgid) else {
        return Ok(());
    };
    let group_dead = if o.exit_group_dead == NO_FIELD {
        tid == tgid
    } else {
        read::<u8>(ctx, o.exit_group_dead)? != 0
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
    let _ = try_switch(&ctx);
    0
}

fn try_switch(ctx: &TracePointContext) -> Result<(), i64> {
    let o = offsets();
    let now = now_ns();
    let run = RUN.get_ptr_mut(0).ok_or(-1)?;
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
            let state: i64 = read(ctx, o.switch_prev_state).unwrap_or(0);
            if state & TASK_STATE_DEAD_MASK != 0 {
                let _ = THREADS.remove(&tid);
                // SAFETY: pointer into the hash map's value, valid for the program's run.
                if unsafe { (*t).dead_tid } == tid {
                    let _ = TRACKED.remove(&tgid);
                }
            } else if unsafe { THREADS.get(&tid) }.is_none() {
                let _ = THREADS.insert(&tid, &tgid, 0);
            }
        }
    }
    let next: i32 = read(ctx, o.switch_next_pid).unwrap_or(0);
    let next_tgid = unsafe { THREADS.get(&(next as u32)) }.copied().unwrap_or(0);
    // Sequence-locked update (see `RunState`): volatile stores keep this order, which is the
    // order a reader on another CPU observes them in.
    // SAFETY: `run` is this CPU's value; all pointers are into it.
    unsafe {
        let seq = (*run).seq_begin.wrapping_add(1);
        write_volatile(&mut (*run).seq_begin, seq);
        write_volatile(&mut (*run).total_ns, (*run).total_ns + slice);
        write_volatile(&mut (*run).since_ns, now);
        write_volatile(&mut (*run).tgid, next_tgid);
        write_volatile(&mut (*run).seq_end, seq);
    }
    Ok(())
}

// ---------------------------------------------------------------- RSS

#[tracepoint]
pub fn o3_rss(ctx: TracePointContext) -> u32 {
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
        unsafe { core::ptr::read(self.0.as_ptr().add(off) as *const u32) }
    }

    #[inline(always)]
    fn i64_at(&self, off: u32) -> i64 {
        let off = (off & (RSS_RECORD_MAX - 8)) as usize;
        // SAFETY: aligned 8-byte read inside the buffer.
        unsafe { core::ptr::read(self.0.as_ptr().add(off) as *const i64) }
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
    let mm_id = rec.u32_at(o.rss_mm_id);
    let size = rec.i64_at(o.rss_size);

    if let Some(mm) = MMS.get_ptr_mut(&mm_id) {
        apply(mm, k, size, &o);
        forget_if_empty(mm_id, mm);
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
    let _ = MMS.insert(&mm_id, &state, BPF_NOEXIST as u64);
    let mm = MMS.get_ptr_mut(&mm_id).ok_or(-1)?;
    replay(mm, &replay_seed, &o);
    // SAFETY: map lookup result is copied.
    if let Some(p) = unsafe { PENDING.get(&mm_id) } {
        let p = *p;
        let _ = PENDING.remove(&mm_id);
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

fn note_pending(mm_id: u32, k: usize, size: i64, now: u64) {
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
fn forget_if_empty(mm_id: u32, mm: *mut MmState) {
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
    let old = unsafe { atomic::swap(&mut (*mm).cur[k], size) };
    let delta = size - old;
    if delta == 0 {
        return;
    }
    let Some(tree) = TREE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `tree` points into the array map's single value, aligned for i64.
    unsafe { atomic::add(&mut (*tree).cur[k], delta) };
    if k == RSS_SWAP {
        return;
    }
    // SAFETY: as above.
    let rss = unsafe { atomic::add(&mut (*tree).rss, delta) } + delta;
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
    let peak = unsafe { &mut (*tree).rss_peak as *mut i64 };
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
    let last = unsafe { &mut (*tree).last_event_peak as *mut i64 };
    // SAFETY: as above.
    let prev = unsafe { core::ptr::read_volatile(last) };
    // SAFETY: as above.
    if rss >= prev + step && unsafe { atomic::cas(last, prev, rss) }.1 {
        emit(EVENT_PEAK, owner, 0, rss, now, |_| {});
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
    unsafe { core::ptr::read_volatile(&GPU_OFFSETS) }
}

/// The size_t at `base + off` in kernel memory; offset 0 means "unknown" (no BTF).
#[inline(always)]
fn read_kernel_size(base: u64, off: u32) -> Result<i64, i64> {
    if base == 0 || off == 0 {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel copies 8 bytes from a kernel address and returns an error
    // instead of faulting.
    let v = unsafe { bpf_probe_read_kernel((base + off as u64) as *const u64) }?;
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
    let cur = unsafe { atomic::add(&mut (*g).cur, size) } + size;
    // SAFETY: as above.
    unsafe { atomic::add(&mut (*g).allocs, 1u64) };
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
    let old = unsafe { atomic::add(&mut (*g).cur, -size) };
    // SAFETY: as above.
    unsafe { atomic::add(&mut (*g).frees, 1u64) };
    let new = old - size;
    if new < 0 {
        // Freed memory allocated before attach: give back the part below zero. Concurrent
        // frees each give back their own part, so the sum telescopes to the clamped value.
        let excess = if size < -new { size } else { -new };
        // SAFETY: as above.
        let cur = unsafe { atomic::add(&mut (*g).cur, excess) } + excess;
        // SAFETY: as above.
        unsafe { atomic::add(&mut (*g).clamped, 1u64) };
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
    let _ = GPU_MEM.insert(&man, &fresh, BPF_NOEXIST as u64);
    GPU_MEM.get_ptr_mut(&man).ok_or(-1)
}

/// Same compare-and-swap pattern as `raise_tree_peak`.
#[inline(always)]
fn raise_gpu_peak(g: *mut GpuMem, cur: i64, now: u64) {
    // SAFETY: `g` points into the GPU_MEM map value, aligned for i64.
    let peak = unsafe { &mut (*g).peak as *mut i64 };
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
