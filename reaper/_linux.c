/*
 * reaper._linux: the Linux calls on reaper's start-up path that Python lacks.
 *
 * Why a C extension: Python has no clone3, and reaching it through ctypes
 * costs ~2 ms of imports (ctypes, _ctypes, struct) and ~0.7 MiB of RSS on
 * every `reaper exec` in cgroup mode; python-prctl's _prctl costs ~0.3-0.4 ms
 * to import (it links libcap) for two prctl(2) calls; and fork() copies the
 * interpreter's page tables for a child that only execs (spawn below).  This
 * module is built at install time with the compiler python-prctl already
 * needs; reaper.spawn falls back to ctypes (clone3) and _prctl
 * (prctl) when it is missing, e.g. in a checkout run from PYTHONPATH.
 *
 * prctl(option, arg2) calls prctl(option, arg2, 0, 0, 0) and returns its
 * result (for the "set" options reaper uses: PR_SET_CHILD_SUBREAPER,
 * PR_SET_PDEATHSIG); OSError with errno on failure.
 *
 * clone_into_cgroup(cgroup_fd, want_pidfd) behaves like os.fork(): it runs
 * CPython's fork hooks (PyOS_BeforeFork / PyOS_AfterFork_Parent /
 * PyOS_AfterFork_Child, so os.register_at_fork handlers and the runtime's
 * own locks are handled exactly as os.fork() handles them) around
 *     clone3({.flags = CLONE_INTO_CGROUP [| CLONE_PIDFD],
 *             .exit_signal = SIGCHLD, .cgroup = cgroup_fd})
 * and returns (pid, pidfd) in the parent, (0, -1) in the child.  pidfd is -1
 * unless want_pidfd; the kernel creates it close-on-exec (clone(2): "the
 * close-on-exec flag is set on this new file descriptor").  On failure it
 * raises OSError with the kernel's errno (ENOSYS: no clone3; E2BIG/EINVAL:
 * no CLONE_INTO_CGROUP, Linux < 5.7; EPERM: a seccomp filter) and nothing was
 * created.
 *
 * spawn(candidates, argv, cgroup_fd, want_pidfd, tty_fd, foreground, reset,
 *       pdeathsig, parent) starts the job's first process the way posix_spawn(3)
 * does, which Python's os.fork() cannot: clone3 with CLONE_VM | CLONE_VFORK
 * (| CLONE_INTO_CGROUP when cgroup_fd >= 0, | CLONE_PIDFD), the child on a
 * small stack of its own in the parent's frame, the parent suspended until
 * the child has exec'ed or exited.  No page table is copied and no page
 * is copied on write afterwards: measured, this start costs ~0.3 ms where
 * fork + exec costs 0.6-1.6 ms in a Python process (bench/RESULTS.md).  The child runs only the C
 * below (no Python, so no fork hooks): every signal with a handler, and every
 * signal in `reset`, back to SIG_DFL (the memory is the parent's: a handler
 * must not run in the child); its own session (setsid), or at a terminal
 * (tty_fd >= 0) its own process group, made the foreground one if asked;
 * PR_SET_PDEATHSIG (pdeathsig > 0), leaving if the parent is no longer
 * `parent`; the caller's signal mask; then execve of each candidate path with
 * execvp's error rules and the process's environment.  Signals stay blocked in
 * the parent from before clone3 until the child is gone from its memory.  It
 * returns (pid, pidfd or -1, stage, errno): stage is None once exec
 * succeeded, else "session", "pdeathsig" or "exec", and the child has exited
 * (with 125, or 126/127 for exec) and is left for the caller to reap.
 * OSError if clone3 itself fails (nothing was created; the caller falls back
 * to clone_into_cgroup / fork).  Only on x86_64, whose clone3 entry this
 * file knows (a child on a new stack cannot return through the C library);
 * elsewhere ENOSYS, i.e. the fallback.
 *
 * The struct is declared here rather than taken from <linux/sched.h>, whose
 * struct clone_args lacks the `cgroup` field in headers older than 5.7; its
 * layout is fixed ABI (CLONE_ARGS_SIZE_VER2 = 88 bytes).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

extern char **environ;

#ifndef SYS_clone3
#define SYS_clone3 435          /* the same on every architecture (unified table) */
#endif
#define REAPER_CLONE_PIDFD 0x00001000ULL
#define REAPER_CLONE_INTO_CGROUP 0x200000000ULL
#define REAPER_CLONE_VM 0x00000100ULL
#define REAPER_CLONE_VFORK 0x00004000ULL
#define REAPER_NSIG 65          /* signals 1..64 */
#define CHILD_STACK 32768

struct reaper_clone_args {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
    uint64_t set_tid;
    uint64_t set_tid_size;
    uint64_t cgroup;
};

static PyObject *
clone_into_cgroup(PyObject *module, PyObject *args)
{
    int cgroup_fd;
    int want_pidfd = 0;
    int pidfd = -1;
    struct reaper_clone_args ca;
    long pid;
    int err;

    if (!PyArg_ParseTuple(args, "i|p:clone_into_cgroup", &cgroup_fd, &want_pidfd))
        return NULL;
    if (cgroup_fd < 0) {
        errno = EBADF;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    memset(&ca, 0, sizeof ca);
    ca.flags = REAPER_CLONE_INTO_CGROUP | (want_pidfd ? REAPER_CLONE_PIDFD : 0);
    ca.pidfd = (uint64_t)(uintptr_t)&pidfd;
    ca.exit_signal = SIGCHLD;
    ca.cgroup = (uint64_t)cgroup_fd;

    PyOS_BeforeFork();
    pid = syscall(SYS_clone3, &ca, sizeof ca);
    err = errno;
    if (pid == 0) {
        PyOS_AfterFork_Child();
        return Py_BuildValue("(ii)", 0, -1);
    }
    PyOS_AfterFork_Parent();
    if (pid < 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(li)", pid, want_pidfd ? pidfd : -1);
}

/* What the vfork child needs, prepared by the parent (the child allocates nothing). */
struct child_plan {
    char **candidates;
    char **argv;
    int tty_fd;
    int foreground;
    int pdeathsig;
    pid_t parent;
    unsigned char reset[REAPER_NSIG];
    sigset_t mask;              /* the caller's mask, restored just before exec */
    const char *stage;          /* written by the child when it fails */
    int err;
};

static int
child_fail(struct child_plan *plan, const char *stage, int err)
{
    plan->stage = stage;
    plan->err = err;
    if (strcmp(stage, "exec") == 0)
        return (err == ENOENT || err == ENOTDIR) ? 127 : 126;
    return 125;
}

static int
child_main(void *arg)
{
    struct child_plan *plan = arg;
    struct sigaction dfl, old;
    int sig, i, saved = 0, last = ENOENT;

    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (sig = 1; sig < REAPER_NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (plan->reset[sig]) {
            sigaction(sig, &dfl, NULL);
        } else if (sigaction(sig, NULL, &old) == 0 && old.sa_handler != SIG_DFL
                   && old.sa_handler != SIG_IGN) {
            sigaction(sig, &dfl, NULL);
        }
    }
    if (plan->tty_fd < 0) {
        if (setsid() < 0)
            return child_fail(plan, "session", errno);
    } else {
        if (setpgid(0, 0) < 0)
            return child_fail(plan, "session", errno);
        if (plan->foreground) {
            /* a background group until this call: ignore SIGTTOU for it */
            struct sigaction ign, was;
            memset(&ign, 0, sizeof ign);
            ign.sa_handler = SIG_IGN;
            sigaction(SIGTTOU, &ign, &was);
            if (tcsetpgrp(plan->tty_fd, getpid()) < 0)
                return child_fail(plan, "session", errno);
            sigaction(SIGTTOU, &was, NULL);
        }
    }
    if (plan->pdeathsig > 0) {
        if (prctl(PR_SET_PDEATHSIG, (unsigned long)plan->pdeathsig, 0UL, 0UL, 0UL) < 0)
            return child_fail(plan, "pdeathsig", errno);
        /* reaper died before we asked?  (0: the parent is outside our pid namespace) */
        if (getppid() != plan->parent && getppid() != 0)
            return child_fail(plan, "pdeathsig", 0);
    }
    sigprocmask(SIG_SETMASK, &plan->mask, NULL);
    for (i = 0; plan->candidates[i] != NULL; i++) {
        execve(plan->candidates[i], plan->argv, environ);
        last = errno;
        if (last != ENOENT && last != ENOTDIR && saved == 0)
            saved = last;
    }
    return child_fail(plan, "exec", saved ? saved : last);
}

#if defined(__x86_64__)
/* clone3 whose child starts on args->stack and runs fn(arg), then exits with its result. */
static long
clone3_run(struct reaper_clone_args *args, int (*fn)(void *), void *arg)
{
    long ret;
    register int (*r12)(void *) __asm__("r12") = fn;
    register void *r13 __asm__("r13") = arg;

    __asm__ volatile (
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "xor %%ebp, %%ebp\n\t"          /* the child, on its own stack */
        "mov %%r13, %%rdi\n\t"
        "call *%%r12\n\t"
        "mov %%eax, %%edi\n\t"
        "mov $60, %%eax\n\t"            /* exit(2): never returns */
        "syscall\n\t"
        "hlt\n"
        "1:\n\t"
        : "=a"(ret)
        : "0"((long)SYS_clone3), "D"(args), "S"(sizeof *args), "r"(r12), "r"(r13)
        : "rcx", "r11", "memory", "cc");
    return ret;
}
#endif

static char **
byte_strings(PyObject *list, PyObject **keep)
{
    Py_ssize_t n, i;
    char **out;

    *keep = PySequence_Fast(list, "expected a list of bytes");
    if (*keep == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(*keep);
    out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(*keep, i);
        if (!PyBytes_Check(item) || memchr(PyBytes_AS_STRING(item), 0, PyBytes_GET_SIZE(item))) {
            PyErr_SetString(PyExc_ValueError, "expected bytes without NUL");
            PyMem_Free(out);
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    return out;
}

static PyObject *
reaper_spawn(PyObject *module, PyObject *args)
{
    PyObject *cand_list, *argv_list, *reset_list;
    PyObject *cand_keep = NULL, *argv_keep = NULL, *reset_keep = NULL, *result = NULL;
    int cgroup_fd, want_pidfd, tty_fd, foreground, pdeathsig, parent;
    struct child_plan plan;

    if (!PyArg_ParseTuple(args, "OOipipOii:spawn", &cand_list, &argv_list, &cgroup_fd, &want_pidfd,
                          &tty_fd, &foreground, &reset_list, &pdeathsig, &parent))
        return NULL;
    memset(&plan, 0, sizeof plan);
    plan.tty_fd = tty_fd;
    plan.foreground = foreground;
    plan.pdeathsig = pdeathsig;
    plan.parent = parent;
    plan.candidates = byte_strings(cand_list, &cand_keep);
    if (plan.candidates == NULL)
        goto done;
    plan.argv = byte_strings(argv_list, &argv_keep);
    if (plan.argv == NULL)
        goto done;
    reset_keep = PySequence_Fast(reset_list, "expected a list of signal numbers");
    if (reset_keep == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(reset_keep); i++) {
        long sig = PyLong_AsLong(PySequence_Fast_GET_ITEM(reset_keep, i));
        if (sig == -1 && PyErr_Occurred())
            goto done;
        if (sig > 0 && sig < REAPER_NSIG)
            plan.reset[sig] = 1;
    }
#if defined(__x86_64__)
    {
        /* The child's stack: part of this frame, unused by the parent while
         * it is suspended (CLONE_VFORK).  16-byte aligned at the top. */
        _Alignas(16) char stack[CHILD_STACK];
        struct reaper_clone_args ca;
        sigset_t all;
        int pidfd = -1, err;
        long pid;

        memset(&ca, 0, sizeof ca);
        ca.flags = REAPER_CLONE_VM | REAPER_CLONE_VFORK | (want_pidfd ? REAPER_CLONE_PIDFD : 0)
                   | (cgroup_fd >= 0 ? REAPER_CLONE_INTO_CGROUP : 0);
        ca.pidfd = (uint64_t)(uintptr_t)&pidfd;
        ca.exit_signal = SIGCHLD;
        ca.stack = (uint64_t)(uintptr_t)stack;
        ca.stack_size = sizeof stack;
        ca.cgroup = cgroup_fd >= 0 ? (uint64_t)cgroup_fd : 0;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &plan.mask);
        pid = clone3_run(&ca, child_main, &plan);
        err = pid < 0 ? (int)-pid : 0;
        pthread_sigmask(SIG_SETMASK, &plan.mask, NULL);
        if (pid < 0) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            goto done;
        }
        if (plan.stage == NULL)
            result = Py_BuildValue("(liOi)", pid, want_pidfd ? pidfd : -1, Py_None, 0);
        else
            result = Py_BuildValue("(lisi)", pid, want_pidfd ? pidfd : -1, plan.stage, plan.err);
    }
#else
    (void)cgroup_fd;
    (void)want_pidfd;
    errno = ENOSYS;
    PyErr_SetFromErrno(PyExc_OSError);
#endif
done:
    if (plan.candidates)
        PyMem_Free(plan.candidates);
    if (plan.argv)
        PyMem_Free(plan.argv);
    Py_XDECREF(cand_keep);
    Py_XDECREF(argv_keep);
    Py_XDECREF(reset_keep);
    return result;
}

static PyObject *
reaper_prctl(PyObject *module, PyObject *args)
{
    int option;
    unsigned long arg2 = 0;
    int r;

    if (!PyArg_ParseTuple(args, "i|k:prctl", &option, &arg2))
        return NULL;
    r = prctl(option, arg2, 0UL, 0UL, 0UL);
    if (r < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(r);
}

static PyMethodDef methods[] = {
    {"clone_into_cgroup", clone_into_cgroup, METH_VARARGS,
     "clone_into_cgroup(cgroup_fd, want_pidfd=False) -> (pid, pidfd)\n\n"
     "fork() whose child is born in the cgroup open at cgroup_fd (clone3,\n"
     "CLONE_INTO_CGROUP); with want_pidfd also CLONE_PIDFD.  The child gets\n"
     "(0, -1); the parent (pid, pidfd or -1).  OSError on failure."},
    {"spawn", reaper_spawn, METH_VARARGS,
     "spawn(candidates, argv, cgroup_fd, want_pidfd, tty_fd, foreground, reset, pdeathsig, parent)\n"
     "-> (pid, pidfd, stage, errno)\n\n"
     "Start argv like posix_spawn (clone3 with CLONE_VM | CLONE_VFORK, into the cgroup\n"
     "open at cgroup_fd when >= 0); see reaper/_linux.c.  OSError if clone3 fails."},
    {"prctl", reaper_prctl, METH_VARARGS,
     "prctl(option, arg2=0) -> int\n\nprctl(option, arg2, 0, 0, 0); OSError on failure."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "reaper._linux",
    "clone3(CLONE_INTO_CGROUP | CLONE_PIDFD) as fork(), and prctl(); see reaper/_linux.c.",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__linux(void)
{
    return PyModule_Create(&module);
}
