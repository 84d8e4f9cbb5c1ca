/*
 * reaper._linux: the two Linux calls on reaper's start-up path that Python lacks.
 *
 * Why a C extension: Python has no clone3, and reaching it through ctypes
 * costs ~2 ms of imports (ctypes, _ctypes, struct) and ~0.7 MiB of RSS on
 * every `reaper exec` in cgroup mode; python-prctl's _prctl costs ~0.3-0.4 ms
 * to import (it links libcap) for two prctl(2) calls.  This module is a few
 * hundred bytes of code built at install time with the compiler python-prctl
 * already needs; reaper.spawn falls back to ctypes (clone3) and _prctl
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
#include <unistd.h>

#ifndef SYS_clone3
#define SYS_clone3 435          /* the same on every architecture (unified table) */
#endif
#define REAPER_CLONE_PIDFD 0x00001000ULL
#define REAPER_CLONE_INTO_CGROUP 0x200000000ULL

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
