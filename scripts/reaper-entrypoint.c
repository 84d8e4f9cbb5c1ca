/*
 * reaper-entrypoint: `reaper` for a container's PID 1, with no window in which
 * the runtime's stop signal is lost.
 *
 * The kernel discards a signal sent to the init of a pid namespace while the
 * init has no handler for it, unless the signal is blocked: a blocked signal
 * is never discarded, it waits (sig_ignored() in kernel/signal.c).  Python
 * takes tens of milliseconds to start before reaper.early can install its
 * handlers, and a `docker stop` right after `docker run` lands there.  So this
 * program, as PID 1, blocks the signals reaper.early catches, then execs the
 * `reaper` launcher next to it (the mask survives execve); reaper.early
 * installs its handlers and unblocks them, and whatever arrived meanwhile is
 * delivered then.  Not PID 1, it only execs: the default action of a signal is
 * right there (nothing has started yet).
 *
 * Built by scripts/install.sh into VENV/bin (statically where libc.a exists,
 * so no dynamic loader runs before main); VENV is fixed at build time.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifndef VENV
#error "build with -DVENV='\"/path/to/venv\"'"
#endif

int main(int argc, char **argv)
{
    static const int caught[] = {SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2};
    const char *launcher = VENV "/bin/reaper";
    (void)argc;
    if (getpid() == 1) {
        sigset_t set;
        sigemptyset(&set);
        for (size_t i = 0; i < sizeof caught / sizeof caught[0]; i++)
            sigaddset(&set, caught[i]);
        sigprocmask(SIG_BLOCK, &set, NULL);
    }
    argv[0] = (char *)launcher;
    execv(launcher, argv);
    fprintf(stderr, "reaper: cannot run %s: %s\n", launcher, strerror(errno));
    return 127;
}
