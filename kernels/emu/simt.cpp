// The runtime of the SIMT emulation (see simt.h and docs/EMULATION.md): fiber
// stacks, the context switch, the per-block scheduler, __syncthreads() and
// the warp exchange behind the shuffles, and the error text.
//
// Everything is per OS thread: a launch runs entirely on the thread that
// calls mpc_emu_<name>, so launches on different threads never meet.

#include "simt.h"

#include <new>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

// x86-64 switches with the few instructions below; elsewhere (or with
// MPC_EMU_UCONTEXT) with ucontext, which is slower (a signal-mask system call
// per switch) but portable.
#if !defined(__x86_64__) && !defined(MPC_EMU_UCONTEXT)
#define MPC_EMU_UCONTEXT 1
#endif
#ifdef MPC_EMU_UCONTEXT
#include <ucontext.h>
#endif

namespace mpc_emu {

__thread const ThreadIds* cur_ids MPC_EMU_TLS_MODEL = nullptr;

namespace {

constexpr unsigned kMaxThreads = 1024;        // threads in a block (CUDA's limit)
constexpr size_t kStackBytes = 64 * 1024;     // each fiber's stack, plus a guard page below it

enum class State : uint8_t {
    Fresh,     // not started in this block
    Runnable,  // started, or released from a barrier
    AtSync,    // waits in __syncthreads()
    AtWarp,    // waits in a shuffle for the other lanes
    Done,      // returned from the kernel
};

struct Fiber {
    ThreadIds ids;  // what threadIdx & co. read
    State state;
    unsigned warp;
    unsigned char* stack;  // the usable stack (kStackBytes), above its guard page
#ifdef MPC_EMU_UCONTEXT
    ucontext_t uc;
#else
    void* sp;  // saved stack pointer while switched out
#endif
};

// The exchange area of one warp. Values of shuffle number g go to slot[g & 1]:
// a lane cannot write slot[g & 1] again (shuffle g + 2) before every lane has
// passed shuffle g + 1, i.e. has read shuffle g's values.
struct Warp {
    uint64_t slot[2][32];
    uint32_t exist;    // lanes that exist (a partial last warp has fewer than 32)
    uint32_t arrived;  // lanes that have written in the current shuffle
    uint32_t mask;     // the current shuffle's mask (the first lane's)
    uint32_t gen;      // shuffles completed
};

struct Runtime {
    Fiber fibers[kMaxThreads];
    Warp warps[kMaxThreads / 32];
    unsigned char* stacks[kMaxThreads] = {};  // mapping bases (guard page first), made on first need
    unsigned nstacks = 0;
#ifdef MPC_EMU_UCONTEXT
    ucontext_t sched_uc;
#else
    void* sched_sp = nullptr;
    uint32_t mxcsr = 0x1f80;  // the launching thread's floating-point control state,
    uint16_t fcw = 0x037f;    // which every fiber starts with
#endif
    Fiber* cur = nullptr;
    unsigned nthreads = 0;
    unsigned sync_arrived = 0;
    unsigned done = 0;
    bool active = false;
    int fail_code = MPC_EMU_OK;  // set by a fiber that fails the launch
    Body body = nullptr;
    void* ctx = nullptr;
    const char* kernel = "";
    size_t page = 4096;

    ~Runtime() {
        for (unsigned i = 0; i < nstacks; ++i) munmap(stacks[i], page + kStackBytes);
    }
};

// The runtime is made on a thread's first launch and freed when it exits.
struct Holder {
    Runtime* rt = nullptr;
    ~Holder() { delete rt; }
};
thread_local Holder holder;

thread_local char last_error[1024];

__attribute__((format(printf, 1, 2))) void set_error(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
}

Runtime& rt() { return *holder.rt; }

// ---- context switch --------------------------------------------------------

#ifndef MPC_EMU_UCONTEXT
// mpc_emu_switch(save, to): saves the callee-saved registers (System V:
// rbx, rbp, r12-r15, the x87 control word and MXCSR) on the current stack,
// stores the stack pointer to *save, and resumes the context whose stack
// pointer is `to`.
extern "C" void mpc_emu_switch(void** save, void* to);
asm(R"(
    .text
    .p2align 4
    .globl mpc_emu_switch
    .hidden mpc_emu_switch
    .type mpc_emu_switch, @function
mpc_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $16, %rsp
    stmxcsr 8(%rsp)
    fnstcw (%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    fldcw (%rsp)
    ldmxcsr 8(%rsp)
    addq $16, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size mpc_emu_switch, .-mpc_emu_switch
)");
#endif

[[noreturn]] void fiber_entry();

// Lays out a fresh frame on the fiber's stack that "returns" into fiber_entry.
void prepare(Runtime& r, Fiber* f) {
#ifdef MPC_EMU_UCONTEXT
    (void)r;
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = kStackBytes;
    f->uc.uc_link = nullptr;
    makecontext(&f->uc, fiber_entry, 0);
#else
    uintptr_t top = (reinterpret_cast<uintptr_t>(f->stack) + kStackBytes) & ~uintptr_t{15};
    uint64_t* s = reinterpret_cast<uint64_t*>(top);
    // From the top: a null return address for fiber_entry (ends backtraces),
    // fiber_entry as the address `ret` takes (leaving rsp = 8 mod 16, as after
    // a call), rbp rbx r12 r13 r14 r15, MXCSR, x87 control word.
    s[-1] = 0;
    s[-2] = reinterpret_cast<uint64_t>(&fiber_entry);
    for (int i = 3; i <= 8; ++i) s[-i] = 0;
    s[-9] = r.mxcsr;
    s[-10] = r.fcw;
    f->sp = &s[-10];
#endif
}

void switch_to_fiber(Runtime& r, Fiber* f) {
#ifdef MPC_EMU_UCONTEXT
    swapcontext(&r.sched_uc, &f->uc);
#else
    mpc_emu_switch(&r.sched_sp, f->sp);
#endif
}

void switch_to_scheduler(Runtime& r, Fiber* f) {
#ifdef MPC_EMU_UCONTEXT
    swapcontext(&f->uc, &r.sched_uc);
#else
    mpc_emu_switch(&f->sp, r.sched_sp);
#endif
}

// Waits in `s` until a barrier release makes the fiber runnable again.
void block(Runtime& r, State s) {
    Fiber* f = r.cur;
    f->state = s;
    switch_to_scheduler(r, f);
}

// Fails the launch from inside a fiber: the scheduler sees fail_code and
// abandons the grid; this fiber is never resumed.
[[noreturn]] void fail(Runtime& r, int code) {
    r.fail_code = code;
    Fiber* f = r.cur;
    f->state = State::Done;
    switch_to_scheduler(r, f);
    abort();
}

void fiber_entry() {
    Runtime& r = rt();
    r.body(r.ctx);
    Fiber* f = r.cur;
    f->state = State::Done;
    r.done += 1;
    switch_to_scheduler(r, f);
    abort();  // a finished fiber is never resumed
}

// ---- the scheduler ---------------------------------------------------------

bool ensure_stacks(Runtime& r, unsigned n) {
    while (r.nstacks < n) {
        void* p = mmap(nullptr, r.page + kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (p == MAP_FAILED) return false;
        unsigned char* base = static_cast<unsigned char*>(p);
        if (mprotect(base, r.page, PROT_NONE) != 0) {
            munmap(base, r.page + kStackBytes);
            return false;
        }
        r.stacks[r.nstacks++] = base;
    }
    return true;
}

const char* state_name(State s) {
    switch (s) {
        case State::Fresh:
            return "fresh";
        case State::Runnable:
            return "runnable";
        case State::AtSync:
            return "at __syncthreads()";
        case State::AtWarp:
            return "at a shuffle";
        case State::Done:
            return "exited";
    }
    return "?";
}

// Nothing can run and not every thread has finished: say who waits where.
int deadlock(Runtime& r, const uint3& b) {
    unsigned at_sync = 0, at_warp = 0, exited = 0;
    for (unsigned t = 0; t < r.nthreads; ++t) {
        State s = r.fibers[t].state;
        at_sync += s == State::AtSync;
        at_warp += s == State::AtWarp;
        exited += s == State::Done;
    }
    char warp_note[256] = "";
    for (unsigned w = 0; w * 32 < r.nthreads; ++w) {
        const Warp& wp = r.warps[w];
        if (wp.arrived != 0) {
            snprintf(warp_note, sizeof warp_note,
                     "; in warp %u, lanes 0x%08x wait at a shuffle over lanes 0x%08x, lanes 0x%08x never came", w,
                     wp.arrived, wp.mask & wp.exist, wp.mask & wp.exist & ~wp.arrived);
            break;
        }
    }
    const Fiber& first = r.fibers[0];
    set_error(
        "kernel %s, block (%u, %u, %u): deadlock: of %u threads, %u wait at __syncthreads(), %u at a warp shuffle, "
        "%u have exited (thread (0, 0, 0) is %s)%s. A barrier that not every thread of the block (or every lane of "
        "the shuffle's mask) reaches is undefined behaviour in CUDA",
        r.kernel, b.x, b.y, b.z, r.nthreads, at_sync, at_warp, exited, state_name(first.state), warp_note);
    return MPC_EMU_ERR_DEADLOCK;
}

int run_block(Runtime& r, const uint3& b) {
    unsigned n = r.nthreads;
    for (unsigned t = 0; t < n; ++t) {
        Fiber* f = &r.fibers[t];
        f->ids.block_idx = b;
        f->state = State::Fresh;
    }
    for (unsigned w = 0; w * 32 < n; ++w) {
        Warp& wp = r.warps[w];
        unsigned lanes = n - w * 32 < 32 ? n - w * 32 : 32;
        wp.exist = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
        wp.arrived = 0;
        wp.mask = 0;
        wp.gen = 0;
    }
    r.sync_arrived = 0;
    r.done = 0;
    // Round-robin over the runnable fibers; each runs until it finishes or
    // waits at a barrier. A pass that runs nothing while some fiber has not
    // finished is a deadlock.
    for (;;) {
        bool ran = false;
        for (unsigned t = 0; t < n; ++t) {
            Fiber* f = &r.fibers[t];
            if (f->state == State::Fresh) {
                prepare(r, f);
                f->state = State::Runnable;
            } else if (f->state != State::Runnable) {
                continue;
            }
            r.cur = f;
            cur_ids = &f->ids;
            switch_to_fiber(r, f);
            if (r.fail_code != MPC_EMU_OK) return r.fail_code;
            ran = true;
        }
        if (r.done == n) return MPC_EMU_OK;
        if (!ran) return deadlock(r, b);
    }
}

const char* kind_name(uint8_t k) {
    switch (k) {
        case MPC_EMU_ARG_PTR:
            return "pointer";
        case MPC_EMU_ARG_I32:
            return "i32";
        case MPC_EMU_ARG_U32:
            return "u32";
        case MPC_EMU_ARG_I64:
            return "i64";
        case MPC_EMU_ARG_U64:
            return "u64";
        case MPC_EMU_ARG_F32:
            return "f32";
        case MPC_EMU_ARG_F64:
            return "f64";
        default:
            return "unknown";
    }
}

void append_kinds(char* buf, size_t size, const uint8_t* kinds, uint32_t n) {
    size_t len = strlen(buf);
    for (uint32_t i = 0; i < n && len < size; ++i) {
        int w = snprintf(buf + len, size - len, "%s%s", i ? ", " : "", kind_name(kinds[i]));
        if (w < 0) return;
        len += static_cast<size_t>(w);
    }
}

}  // namespace

// ---- what kernels call ------------------------------------------------------

void syncthreads() {
    Runtime& r = rt();
    if (++r.sync_arrived == r.nthreads) {
        // The last to arrive releases the others and goes on.
        r.sync_arrived = 0;
        for (unsigned t = 0; t < r.nthreads; ++t) {
            Fiber& f = r.fibers[t];
            if (f.state == State::AtSync) f.state = State::Runnable;
        }
        return;
    }
    block(r, State::AtSync);
}

uint64_t warp_exchange(unsigned int mask, uint64_t bits, unsigned int src) {
    Runtime& r = rt();
    Fiber* f = r.cur;
    Warp& w = r.warps[f->warp];
    unsigned lane = f->ids.lane;
    uint32_t me = 1u << lane;
    if ((mask & me) == 0) {
        set_error("kernel %s: lane %u of warp %u calls a shuffle whose mask 0x%08x leaves it out", r.kernel, lane,
                  f->warp, mask);
        fail(r, MPC_EMU_ERR_WARP);
    }
    if (w.arrived == 0) {
        w.mask = mask;
    } else if (w.mask != mask) {
        set_error("kernel %s: lanes of warp %u pass different masks to one shuffle (0x%08x, 0x%08x)", r.kernel,
                  f->warp, w.mask, mask);
        fail(r, MPC_EMU_ERR_WARP);
    }
    uint32_t lanes = mask & w.exist;
    unsigned par = w.gen & 1u;
    w.slot[par][lane] = bits;
    w.arrived |= me;
    if (w.arrived == lanes) {
        w.arrived = 0;
        w.gen += 1;
        Fiber* base = &r.fibers[f->warp * 32];
        for (unsigned l = 0; l < 32; ++l) {
            if ((w.exist >> l & 1u) && base[l].state == State::AtWarp) base[l].state = State::Runnable;
        }
    } else {
        block(r, State::AtWarp);
    }
    if (src >= 32 || (lanes >> src & 1u) == 0) return bits;
    return w.slot[par][src];
}

unsigned int shfl_width(int width) {
    if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
        Runtime& r = rt();
        set_error("kernel %s: shuffle width %d is not a power of 2 from 1 to 32", r.kernel, width);
        fail(r, MPC_EMU_ERR_WARP);
    }
    return static_cast<unsigned int>(width);
}

int check_args(const char* name, const MpcEmuLaunch* cfg, const uint8_t* kinds, uint32_t nparams) {
    if (cfg == nullptr) {
        set_error("kernel %s: no launch configuration", name);
        return MPC_EMU_ERR_CONFIG;
    }
    bool same = cfg->num_args == nparams && (nparams == 0 || cfg->arg_kinds != nullptr);
    for (uint32_t i = 0; same && i < nparams; ++i) same = cfg->arg_kinds[i] == kinds[i];
    if (same) return MPC_EMU_OK;
    char buf[768];
    snprintf(buf, sizeof buf, "kernel %s takes %u parameters (", name, nparams);
    append_kinds(buf, sizeof buf, kinds, nparams);
    size_t len = strlen(buf);
    snprintf(buf + len, sizeof buf - len, "); the launch passes %u (", cfg->num_args);
    if (cfg->arg_kinds != nullptr) append_kinds(buf, sizeof buf, cfg->arg_kinds, cfg->num_args);
    len = strlen(buf);
    snprintf(buf + len, sizeof buf - len, ")");
    set_error("%s", buf);
    return MPC_EMU_ERR_ARGS;
}

int run(const char* name, const MpcEmuLaunch* cfg, Body body, void* ctx) {
    const uint32_t* g = cfg->grid;
    const uint32_t* bl = cfg->block;
    uint64_t threads = uint64_t{bl[0]} * bl[1] * bl[2];
    if (g[0] == 0 || g[1] == 0 || g[2] == 0 || g[0] > 0x7fffffffu || g[1] > 65535 || g[2] > 65535) {
        set_error("kernel %s: grid (%u, %u, %u) is outside CUDA's limits (1 to 2^31-1, 65535, 65535)", name, g[0],
                  g[1], g[2]);
        return MPC_EMU_ERR_CONFIG;
    }
    if (bl[0] == 0 || bl[1] == 0 || bl[2] == 0 || bl[0] > 1024 || bl[1] > 1024 || bl[2] > 64 || threads > kMaxThreads) {
        set_error("kernel %s: block (%u, %u, %u) is outside CUDA's limits (1 to 1024, 1024, 64; 1024 threads)", name,
                  bl[0], bl[1], bl[2]);
        return MPC_EMU_ERR_CONFIG;
    }
    if (cfg->shared_bytes != 0) {
        set_error("kernel %s: %u bytes of dynamic shared memory: kernels use static __shared__ arrays only", name,
                  cfg->shared_bytes);
        return MPC_EMU_ERR_CONFIG;
    }
    if (holder.rt == nullptr) {
        holder.rt = new (std::nothrow) Runtime;
        if (holder.rt == nullptr) {
            set_error("kernel %s: cannot allocate the emulation's runtime", name);
            return MPC_EMU_ERR_RESOURCES;
        }
        long page = sysconf(_SC_PAGESIZE);
        if (page > 0) holder.rt->page = static_cast<size_t>(page);
    }
    Runtime& r = rt();
    if (r.active) {
        set_error("kernel %s: launched while kernel %s runs on the same thread", name, r.kernel);
        return MPC_EMU_ERR_NESTED;
    }
    unsigned n = static_cast<unsigned>(threads);
    if (!ensure_stacks(r, n)) {
        set_error("kernel %s: cannot map %u fiber stacks of %zu KiB", name, n, kStackBytes / 1024);
        return MPC_EMU_ERR_RESOURCES;
    }
#ifndef MPC_EMU_UCONTEXT
    asm volatile("stmxcsr %0" : "=m"(r.mxcsr));
    asm volatile("fnstcw %0" : "=m"(r.fcw));
#endif
    r.active = true;
    r.fail_code = MPC_EMU_OK;
    r.body = body;
    r.ctx = ctx;
    r.kernel = name;
    r.nthreads = n;
    uint3 bdim{bl[0], bl[1], bl[2]};
    uint3 gdim{g[0], g[1], g[2]};
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = r.fibers[t];
        f.ids.thread_idx = uint3{t % bl[0], t / bl[0] % bl[1], t / (bl[0] * bl[1])};
        f.ids.block_dim = bdim;
        f.ids.grid_dim = gdim;
        f.ids.lane = t % 32;
        f.warp = t / 32;
        f.stack = r.stacks[t] + r.page;
    }
    int rc = MPC_EMU_OK;
    for (uint32_t z = 0; z < g[2] && rc == MPC_EMU_OK; ++z) {
        for (uint32_t y = 0; y < g[1] && rc == MPC_EMU_OK; ++y) {
            for (uint32_t x = 0; x < g[0] && rc == MPC_EMU_OK; ++x) rc = run_block(r, uint3{x, y, z});
        }
    }
    // A failed block's fibers are abandoned mid-kernel: nothing on their
    // stacks needs unwinding (kernels hold no resources), and the next
    // launch lays fresh frames over them.
    r.active = false;
    r.cur = nullptr;
    cur_ids = nullptr;
    if (rc == MPC_EMU_OK) last_error[0] = '\0';
    return rc;
}

}  // namespace mpc_emu

extern "C" const char* mpc_emu_last_error(void) { return mpc_emu::last_error; }
