"""The syscall filter as data: named groups of system calls and what each mode
does with them.

Everything a filter allows or denies is written down here, once, so that the
compiled filter (``seccomp.py``), ``stockade filters show`` and
``docs/filters.md`` all come from the same lists. Nothing in this module talks
to the kernel.

A group is a set of calls with one purpose. Each mode either allows a group
or denies it; a denied group says how (an errno, or ``kill`` for calls no
legitimate program makes) and why. Groups in ``ALWAYS_DENIED`` are denied in
every enforcing mode whatever a policy says. A few calls are allowed only
with some arguments (``ARGUMENT_RULES``): ``clone`` without namespace flags,
``ioctl`` other than TIOCSTI and the terminal requests in ``IOCTL_DENIED``, ``socket`` by address family, the
mode-setting calls without the set-user-ID and set-group-ID bits.

Names are those of libseccomp; a group may name calls that exist only on
some architectures (``open`` exists on x86_64, not on aarch64). Calls newer
than the libseccomp the host has are listed in ``NEWER_SYSCALLS`` with their
numbers, which are the same on every architecture from 424 on.
"""

from __future__ import annotations

from dataclasses import dataclass

STRICT = "strict"
MODERATE = "moderate"
PERMISSIVE = "permissive"
MODES = (STRICT, MODERATE, PERMISSIVE)

KILL = "kill"


@dataclass(frozen=True)
class Group:
    """A named set of system calls and how each mode treats it.

    Attributes:
        name: short identifier (used by ``stockade filters show``).
        summary: what the calls are for.
        calls: libseccomp names.
        allowed_in: the modes that allow the group (empty: always denied).
        deny: what a mode that does not allow the group answers: an errno
            name (``"EPERM"``, ``"ENOSYS"``) or ``"kill"``.
        why: why the group is denied where it is denied.
    """

    name: str
    summary: str
    calls: tuple[str, ...]
    allowed_in: frozenset[str]
    deny: str
    why: str


def _calls(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_ALL = frozenset(MODES)
_MOD = frozenset((MODERATE, PERMISSIVE))
_PERM = frozenset((PERMISSIVE,))
_NONE: frozenset[str] = frozenset()

GROUPS: tuple[Group, ...] = (
    # --- allowed in every mode -------------------------------------------
    Group(
        "basic-io",
        "read, write and manage open descriptors",
        _calls(
            "read write readv writev pread64 pwrite64 preadv pwritev preadv2 "
            "pwritev2 lseek _llseek close close_range dup dup2 dup3 fcntl fcntl64 "
            "pipe pipe2 sendfile sendfile64 splice tee vmsplice copy_file_range "
            "ioctl"
        ),
        _ALL, "EPERM", "",
    ),
    Group(
        "file-read",
        "look up, open and read files and directories",
        _calls(
            "open openat stat fstat lstat newfstatat fstatat64 stat64 fstat64 "
            "lstat64 statx statfs fstatfs statfs64 fstatfs64 access faccessat "
            "faccessat2 readlink readlinkat getdents getdents64 getcwd chdir "
            "fchdir fadvise64 fadvise64_64 arm_fadvise64_64 readahead flock "
            "getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr "
            "getxattrat listxattrat cachestat"
        ),
        _ALL, "EPERM", "",
    ),
    Group(
        "file-write",
        "create, change and remove files (the mount view decides where)",
        _calls(
            "creat mkdir mkdirat mknod mknodat rmdir unlink unlinkat rename "
            "renameat renameat2 link linkat symlink symlinkat truncate "
            "truncate64 ftruncate ftruncate64 fallocate fsync fdatasync "
            "sync_file_range sync_file_range2 arm_sync_file_range syncfs sync "
            "chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat "
            "chown32 fchown32 lchown32 umask utime utimes utimensat futimesat "
            "utimensat_time64 setxattr lsetxattr fsetxattr removexattr "
            "lremovexattr fremovexattr setxattrat removexattrat file_getattr "
            "file_setattr"
        ),
        _ALL, "EPERM", "",
    ),
    Group(
        "memory",
        "map, protect and release the process's own memory",
        _calls(
            "brk mmap mmap2 munmap mprotect mremap madvise mincore msync mlock "
            "mlock2 munlock mlockall munlockall membarrier pkey_mprotect "
            "pkey_alloc pkey_free memfd_create map_shadow_stack mseal "
            "remap_file_pages"
        ),
        _ALL, "EPERM", "",
    ),
    Group(
        "signals",
        "signal handlers, masks and signals to processes in the sandbox",
        _calls(
            "rt_sigaction rt_sigprocmask rt_sigreturn sigreturn rt_sigpending "
            "rt_sigtimedwait rt_sigtimedwait_time64 rt_sigsuspend rt_sigqueueinfo "
            "rt_tgsigqueueinfo sigaltstack kill tkill tgkill pause signalfd "
            "signalfd4 restart_syscall"
        ),
        _ALL, "EPERM", "",
    ),
    Group(
        "time",
        "read clocks, sleep, timers",
        _calls(
            "clock_gettime clock_gettime64 clock_getres clock_getres_time64 "
            "gettimeofday time nanosleep clock_nanosleep clock_nanosleep_time64 "
            "getitimer setitimer alarm times timer_create timer_settime "
            "timer_settime64 timer_gettime timer_gettime64 timer_getoverrun "
            "timer_delete timerfd_create timerfd_settime timerfd_settime64 "
            "timerfd_gettime timerfd_gettime64"
        ),
        _ALL, "EPERM", "",
    ),
    Group(
        "process-info",
        "the process's own identity, limits and runtime set-up; waiting for "
        "children (the sandbox's pid 1 reaps)",
        _calls(
            "getpid getppid gettid getuid geteuid getgid getegid getuid32 "
            "geteuid32 getgid32 getegid32 getresuid getresgid getresuid32 "
            "getresgid32 getgroups getgroups32 getpgid getpgrp getsid setsid "
            "setpgid uname sysinfo getrlimit ugetrlimit setrlimit prlimit64 "
            "getrusage getpriority getcpu capget capset arch_prctl "
            "set_tid_address rseq prctl exit exit_group wait4 waitid getrandom "
            "sched_yield "
            "sched_getaffinity sched_getparam sched_getscheduler sched_getattr "
            "sched_get_priority_max sched_get_priority_min "
            "sched_rr_get_interval sched_rr_get_interval_time64 ioprio_get "
            "personality set_thread_area get_thread_area set_tls get_tls "
            "cacheflush riscv_flush_icache uretprobe"
        ),
        _ALL, "EPERM", "",
    ),
    Group(
        "threads",
        "thread creation (clone with CLONE_THREAD) and synchronisation",
        _calls(
            "clone futex futex_time64 futex_waitv futex_wake futex_wait "
            "futex_requeue set_robust_list get_robust_list"
        ),
        _ALL, "EPERM", "",
    ),
    Group(
        "events",
        "wait for descriptors and events",
        _calls(
            "poll ppoll ppoll_time64 select _newselect pselect6 pselect6_time64 "
            "epoll_create epoll_create1 epoll_ctl epoll_wait epoll_pwait "
            "epoll_pwait2 eventfd eventfd2 inotify_init inotify_init1 "
            "inotify_add_watch inotify_rm_watch"
        ),
        _ALL, "EPERM", "",
    ),
    Group(
        "exec",
        "run a program (always reported to the supervisor: it marks the "
        "program's start)",
        _calls("execve execveat"),
        _ALL, "EPERM", "",
    ),
    Group(
        "socket-io",
        "operations on sockets the process already holds",
        _calls(
            "connect bind listen accept accept4 sendto recvfrom send recv "
            "sendmsg recvmsg sendmmsg recvmmsg recvmmsg_time64 shutdown "
            "getsockname getpeername setsockopt getsockopt"
        ),
        _ALL, "EPERM", "",
    ),
    # --- moderate and permissive -------------------------------------------
    Group(
        "processes",
        "create processes (fork, vfork, clone without CLONE_THREAD), "
        "process descriptors",
        _calls("fork vfork pidfd_open pidfd_send_signal"),
        _MOD, "EPERM",
        "strict runs one program: no new processes",
    ),
    Group(
        "sockets",
        "create sockets; address families follow the network policy",
        _calls("socket socketpair"),
        _MOD, "EAFNOSUPPORT",
        "strict creates no sockets at all",
    ),
    Group(
        "ipc",
        "System V and POSIX message queues, semaphores, shared memory (the "
        "sandbox has its own IPC namespace)",
        _calls(
            "shmget shmat shmctl shmdt semget semop semtimedop "
            "semtimedop_time64 semctl msgget msgsnd msgrcv msgctl mq_open "
            "mq_unlink mq_timedsend mq_timedsend_time64 mq_timedreceive "
            "mq_timedreceive_time64 mq_notify mq_getsetattr ipc"
        ),
        _MOD, "EPERM",
        "strict programs share nothing with other processes",
    ),
    Group(
        "scheduling",
        "change priorities, CPU affinity and scheduling of own processes",
        _calls(
            "sched_setaffinity sched_setparam sched_setscheduler sched_setattr "
            "setpriority ioprio_set"
        ),
        _MOD, "EPERM",
        "not needed to compute",
    ),
    Group(
        "self-restriction",
        "a program tightening its own sandbox (seccomp, Landlock)",
        _calls(
            "seccomp landlock_create_ruleset landlock_add_rule "
            "landlock_restrict_self"
        ),
        _MOD, "EPERM",
        "not needed to compute",
    ),
    Group(
        "memory-policy",
        "NUMA policy of the process's own memory",
        _calls("mbind set_mempolicy get_mempolicy set_mempolicy_home_node"),
        _MOD, "EPERM",
        "not needed to compute",
    ),
    # --- permissive only ---------------------------------------------------
    Group(
        "async-io",
        "legacy Linux AIO (io_setup, io_submit, ...)",
        _calls(
            "io_setup io_destroy io_getevents io_pgetevents io_pgetevents_time64 "
            "io_submit io_cancel"
        ),
        _PERM, "ENOSYS",
        "rarely used kernel surface; programs fall back to plain I/O on ENOSYS",
    ),
    Group(
        "system-info",
        "mount listing, LSM attributes, other processes' memory policy",
        _calls(
            "statmount listmount lsm_get_self_attr lsm_set_self_attr "
            "lsm_list_modules migrate_pages move_pages process_mrelease "
            "memfd_secret fanotify_init fanotify_mark modify_ldt "
            "subpage_prot s390_runtime_instr s390_guarded_storage"
        ),
        _PERM, "ENOSYS",
        "rarely used kernel surface; programs fall back on ENOSYS",
    ),
    # --- always denied ----------------------------------------------------
    Group(
        "mount",
        "mount, unmount, change the root",
        _calls(
            "mount umount umount2 pivot_root chroot fsopen fsconfig fsmount "
            "fspick move_mount open_tree open_tree_attr mount_setattr"
        ),
        _NONE, "EPERM",
        "the mount view is built before the program starts and must not change",
    ),
    Group(
        "namespaces",
        "new namespaces (unshare, setns; clone with namespace flags is "
        "filtered by its arguments)",
        _calls("unshare setns listns"),
        _NONE, "EPERM",
        "a new user namespace reopens kernel surface the sandbox closed",
    ),
    Group(
        "debug",
        "reading or changing other processes (ptrace and friends)",
        _calls(
            "ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd "
            "process_madvise"
        ),
        _NONE, "EPERM",
        "a debugger's powers over other processes; tracers fail cleanly",
    ),
    Group(
        "perf-bpf",
        "performance counters and eBPF programs",
        _calls("perf_event_open bpf"),
        _NONE, "EPERM",
        "large kernel attack surface; profilers report the error",
    ),
    Group(
        "keyring",
        "the kernel keyring",
        _calls("keyctl add_key request_key"),
        _NONE, "EPERM",
        "the keyring is not namespaced; libraries probing it fail cleanly",
    ),
    Group(
        "userfaultfd",
        "page-fault handling in user space",
        _calls("userfaultfd"),
        _NONE, "EPERM",
        "makes kernel races reliable to exploit",
    ),
    Group(
        "io_uring",
        "io_uring rings",
        _calls("io_uring_setup io_uring_enter io_uring_register"),
        _NONE, "EPERM",
        "ring operations bypass per-call filtering; runtimes fall back",
    ),
    Group(
        "handles",
        "file handles",
        _calls("name_to_handle_at"),
        _NONE, "EPERM",
        "only useful together with open_by_handle_at",
    ),
    Group(
        "handle-open",
        "open a file by handle, bypassing path checks",
        _calls("open_by_handle_at"),
        _NONE, KILL,
        "the 'shocker' container escape; no script calls it",
    ),
    Group(
        "identity",
        "change user or group ids",
        _calls(
            "setuid setgid setreuid setregid setresuid setresgid setfsuid "
            "setfsgid setgroups setuid32 setgid32 setreuid32 setregid32 "
            "setresuid32 setresgid32 setfsuid32 setfsgid32 setgroups32"
        ),
        _NONE, "EPERM",
        "the sandbox has one identity; su/sudo-like code fails cleanly",
    ),
    Group(
        "clock-set",
        "set the system clock",
        _calls(
            "settimeofday clock_settime clock_settime64 adjtimex clock_adjtime "
            "clock_adjtime64 stime"
        ),
        _NONE, "EPERM",
        "the clock is the host's",
    ),
    Group(
        "system-admin",
        "host administration: accounting, kernel log, quotas, host name",
        _calls(
            "acct syslog quotactl quotactl_fd sethostname setdomainname vhangup"
        ),
        _NONE, "EPERM",
        "host administration; tools like dmesg fail cleanly",
    ),
    Group(
        "kernel-control",
        "reboot, kexec, kernel modules, swap, raw port I/O",
        _calls(
            "reboot kexec_load kexec_file_load init_module finit_module "
            "delete_module swapon swapoff iopl ioperm pciconfig_read "
            "pciconfig_write pciconfig_iobase"
        ),
        _NONE, KILL,
        "no program in a sandbox has a reason to try; the process is killed",
    ),
    Group(
        "obsolete",
        "obsolete or unimplemented calls",
        _calls(
            "_sysctl uselib ustat sysfs create_module get_kernel_syms "
            "query_module nfsservctl getpmsg putpmsg afs_syscall tuxcall "
            "security vserver epoll_ctl_old epoll_wait_old lookup_dcookie "
            "bdflush idle oldolduname olduname oldstat oldfstat oldlstat "
            "break ftime gtty stty lock mpx prof profil ulimit"
        ),
        _NONE, "ENOSYS",
        "not implemented by current kernels, or only for long-gone programs",
    ),
)

GROUPS_BY_NAME = {group.name: group for group in GROUPS}

# Groups denied in every enforcing mode. A policy can neither allow them nor
# their calls one by one.
ALWAYS_DENIED = tuple(group.name for group in GROUPS if not group.allowed_in)

# Calls the supervisor always hears about, in every mode: they mark the
# program's start (see supervise.py) and then always continue.
NOTIFIED_ALWAYS = ("execve", "execveat")

# Calls every filter must let through untouched: between installing the
# filter and exec, the launcher child sends the listener (sendmsg) and
# closes descriptors (close). A notification then would hang the child,
# whose listener nobody holds yet.
LAUNCHER_NEEDS = ("sendmsg", "close")

# Answered ENOSYS in the filter itself, without a notification: they are not
# denied, the program is told they do not exist so that it falls back.
#   clone3: its flags live in memory the filter cannot read; glibc falls
#       back to clone, whose flags the filter inspects (moby/moby#42681).
#   openat2: its mode lives in memory too (see the set-user-ID rules below);
#       programs fall back to openat.
ENOSYS_IN_FILTER = ("clone3", "openat2")

# Calls newer than the libseccomp release on the host, with their numbers.
# From 424 on, numbers are the same on every architecture (the kernel's
# "common" table); uretprobe is x86_64 only.
NEWER_SYSCALLS: dict[str, dict[str, int]] = {
    "statmount": {"*": 457},
    "listmount": {"*": 458},
    "lsm_get_self_attr": {"*": 459},
    "lsm_set_self_attr": {"*": 460},
    "lsm_list_modules": {"*": 461},
    "mseal": {"*": 462},
    "setxattrat": {"*": 463},
    "getxattrat": {"*": 464},
    "listxattrat": {"*": 465},
    "removexattrat": {"*": 466},
    "open_tree_attr": {"*": 467},
    "file_getattr": {"*": 468},
    "file_setattr": {"*": 469},
    "listns": {"*": 470},
    "uretprobe": {"x86_64": 335},
}

# --- argument rules ---------------------------------------------------------

# Namespace flags of clone(2): CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
# NEWUSER, NEWPID, NEWNET. The kernel reads the low 32 bits of the flags.
CLONE_NEW_FLAGS = 0x7E020000
CLONE_THREAD = 0x00010000

# ioctl requests refused in every enforcing mode. The kernel compares only
# the low 32 bits of the request, so the filter must too (CVE-2019-7303).
# The program may be handed the caller's terminal (the CLI passes its stdin,
# stdout and stderr through); what a request does to it outlives the run:
#   TIOCSTI     pushes input into the terminal: the caller's shell runs it
#               after the run (CVE-2017-5226)
#   TIOCLINUX   the Linux console driver; its selection paste does the same
#   TIOCSETD    changes the line discipline: N_NULL leaves the terminal
#               unusable (writes fail EOPNOTSUPP) after the run
#   TIOCSCTTY   makes the terminal the sandbox session's controlling one;
#               when that session ends a console is hung up
#   TIOCVHANGUP hangs the terminal up for every process that has it open
#   TIOCCONS    redirects the system console's output to the terminal
#   TIOCEXCL    exclusive mode: later opens of the terminal fail EBUSY
# None has a use in a script's run; requests that change settings a program
# needs (TCSETS*, as stty, getpass and readline use, TIOCSWINSZ, which pty
# tools set on their own ptys) stay allowed: the CLI puts the caller's
# terminal settings and window size back after the run (docs/filters.md).
IOCTL_DENIED = {
    "TIOCSTI": 0x5412,
    "TIOCLINUX": 0x541C,
    "TIOCSETD": 0x5423,
    "TIOCSCTTY": 0x540E,
    "TIOCVHANGUP": 0x5437,
    "TIOCCONS": 0x541D,
    "TIOCEXCL": 0x540C,
}

# Set-user-ID and set-group-ID mode bits. A root-owned workspace is idmapped
# into the sandbox (see manager.py), so a file the program marks set-user-ID
# would be a set-user-ID-root file on the host.
S_ISUID_ISGID = 0o6000
O_CREAT = 0o100
O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE, without O_DIRECTORY

# Where the mode argument sits, per call: (mode index, flags index or None).
# The flags matter for open/openat only: without O_CREAT or O_TMPFILE the
# mode is ignored by the kernel.
MODE_ARGUMENT = {
    "chmod": (1, None),
    "fchmod": (1, None),
    "fchmodat": (2, None),
    "fchmodat2": (2, None),
    "creat": (1, None),
    "mkdir": (1, None),
    "mkdirat": (2, None),
    "mknod": (1, None),
    "mknodat": (2, None),
    "open": (2, 1),
    "openat": (3, 2),
}

PERSONALITY_QUERY = 0xFFFFFFFF
PER_LINUX = 0

AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
NETLINK_ROUTE = 0

# --- bubblewrap's set-up ------------------------------------------------------

# bubblewrap builds the sandbox under the filter (it is installed before
# bubblewrap starts, see seccomp.py), with calls the program is denied. The
# 28 to 48 ``mount`` calls of each launch would each be a round trip through
# the supervisor, so the filter the launcher installs ALLOWs them by these
# argument patterns, and a second filter, which bubblewrap installs right
# before it execs the program (``--add-seccomp-fd``), refuses exactly the
# same patterns to the program and all its descendants with the call's
# answer. Those refusals happen in that second filter: they are not
# reported. Every other pattern of these calls is still refused by the first
# filter and named.
# TODO(#3): a program's mount with exactly these flags (and in strict these
# two sockets) is refused unnamed meanwhile; naming it too needs the filter
# installed after the set-up, by a helper bubblewrap execs before the
# program (docs/filters.md, known limitations).
#
# Only the calls bubblewrap makes by the dozen are here. Its two
# ``pivot_root``, two ``umount2(MNT_DETACH)`` and two
# ``unshare(CLONE_NEWUSER)`` (``--disable-userns``) are notified like any
# other denied call: the supervisor lets them continue before the program's
# first ``execve`` and refuses and names them after (six round trips per
# launch, so that a program probing them is named).
#
# The list comes from tracing bubblewrap 0.8 with the arguments stockade
# passes (root and unprivileged callers, every mode, hidden paths, presets,
# network allowlists): ``strace -f -e trace=mount,umount2,pivot_root,unshare,
# clone,socket``, and from its source (``bind-mount.c`` turns the host's
# mount options into ro, nosuid, nodev, noexec, noatime, nodiratime and
# relatime only). A pattern only applies where the mode denies it.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
# The old mount magic in the high 16 bits of the low word; the kernel drops
# it. bubblewrap passes it in one call only (the bind of "newroot").
MS_MGC_VAL = 0xC0ED0000
# The bits bubblewrap combines with MS_SILENT: binds, recursive binds,
# remounts with the host's options plus nosuid/nodev/ro, and the slave and
# private propagation changes of "/" and the old root. MS_MOVE, MS_SHARED,
# MS_UNBINDABLE, MS_STRICTATIME, MS_LAZYTIME and the rest are not among them.
BWRAP_SILENT_BITS = (
    MS_BIND | MS_REC | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    | MS_NOATIME | MS_NODIRATIME | MS_RELATIME | MS_PRIVATE | MS_SLAVE
)
SOCK_DGRAM = 2
SOCK_RAW = 3
SOCK_CLOEXEC = 0o2000000
_ALL_BITS = 0xFFFFFFFFFFFFFFFF
_LOW32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SetupPattern:
    """One argument pattern of a call bubblewrap makes while it sets up.

    Attributes:
        call: the call's name.
        tests: (argument index, mask, value) tests that must all hold,
            ``(arg & mask) == value``; empty: any arguments.
        arguments: the pattern, for people.
        why: which of bubblewrap's steps makes the call.
    """

    call: str
    tests: tuple[tuple[int, int, int], ...]
    arguments: str
    why: str


BWRAP_SETUP: tuple[SetupPattern, ...] = (
    SetupPattern(
        # One test: MS_SILENT set and no bit outside BWRAP_SILENT_BITS.
        "mount", ((3, _ALL_BITS & ~BWRAP_SILENT_BITS, MS_SILENT),),
        "flags MS_SILENT with nothing but MS_BIND, MS_REC, MS_REMOUNT, "
        "MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_NOATIME, MS_NODIRATIME, "
        "MS_RELATIME, MS_PRIVATE, MS_SLAVE",
        "every bind mount, remount and propagation change (the remount flags "
        "add the host's mount options, which bubblewrap reads as ro, nosuid, "
        "nodev, noexec and the atime options)",
    ),
    SetupPattern(
        "mount", ((3, _ALL_BITS, MS_MGC_VAL | MS_SILENT | MS_BIND | MS_REC),),
        "flags exactly MS_MGC_VAL|MS_SILENT|MS_BIND|MS_REC",
        "the bind of the new root onto itself",
    ),
    SetupPattern(
        "mount", ((3, _ALL_BITS, MS_NOSUID | MS_NODEV),),
        "flags exactly MS_NOSUID|MS_NODEV", "tmpfs mounts (the root, /dev, "
        "/tmp, /var/tmp, /dev/shm, the home, hidden directories)",
    ),
    SetupPattern(
        "mount", ((3, _ALL_BITS, MS_NOSUID | MS_NODEV | MS_NOEXEC),),
        "flags exactly MS_NOSUID|MS_NODEV|MS_NOEXEC", "/proc",
    ),
    SetupPattern(
        "mount", ((3, _ALL_BITS, MS_NOSUID | MS_NOEXEC),),
        "flags exactly MS_NOSUID|MS_NOEXEC", "/dev/pts (devpts)",
    ),
    SetupPattern(
        "socket",
        ((0, _LOW32, AF_UNIX), (1, _LOW32, SOCK_DGRAM | SOCK_CLOEXEC), (2, _LOW32, 0)),
        "exactly AF_UNIX, SOCK_DGRAM|SOCK_CLOEXEC, 0",
        "looking up the loopback interface (libc's if_nametoindex)",
    ),
    SetupPattern(
        "socket",
        ((0, _LOW32, AF_NETLINK), (1, _LOW32, SOCK_RAW | SOCK_CLOEXEC),
         (2, _LOW32, NETLINK_ROUTE)),
        "exactly AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_ROUTE",
        "bringing up the loopback interface",
    ),
)

# --- the second tier: calls that act on another process by pid ---------------

# Without a pid namespace (the Landlock tier) the host's processes are in
# reach of every call that names a process by pid and that the kernel checks
# by uid alone, not by ptrace access (which Landlock scopes to the run) nor
# by signal delivery (scoped from Landlock ABI 6): a program could lower the
# limits of, renice or pin any host process of its uid, the run's monitor
# included. In that tier these calls are allowed only on the caller itself,
# named by 0; anything else is refused (EPERM) and named. glibc's
# setrlimit/getrlimit call prlimit64(0, ...), nice() setpriority(PRIO_PROCESS,
# 0, ...), so self-use keeps working; naming oneself by one's own pid
# (``resource.prlimit(os.getpid(), ...)``) is refused. Process groups are
# refused too: the program starts in its monitor's process group, and may
# join it again with setpgid. Calls that only read another process's
# settings (getpriority, sched_getaffinity, prlimit64 without a new limit,
# ...) stay allowed: they change nothing (docs/hosts.md, known limitations).
PRIO_PROCESS = 0
IOPRIO_WHO_PROCESS = 1

SELF_ONLY_BY_PID: dict[str, tuple[tuple[tuple[int, int, int], ...], ...]] = {
    # pid 0, or no new limit (arg 2 NULL: reading only)
    "prlimit64": (((0, _LOW32, 0),), ((2, _ALL_BITS, 0),)),
    "setpriority": (((0, _LOW32, PRIO_PROCESS), (1, _LOW32, 0)),),
    "ioprio_set": (((0, _LOW32, IOPRIO_WHO_PROCESS), (1, _LOW32, 0)),),
    "sched_setaffinity": (((0, _LOW32, 0),),),
    "sched_setscheduler": (((0, _LOW32, 0),),),
    "sched_setparam": (((0, _LOW32, 0),),),
    "sched_setattr": (((0, _LOW32, 0),),),
    "migrate_pages": (((0, _LOW32, 0),),),
    "move_pages": (((0, _LOW32, 0),),),
}

# What each rule allows, for the documentation (same order as above).
SELF_ONLY_TEXT: dict[str, str] = {
    "prlimit64": "pid 0 (the caller), or reading only (no new limit)",
    "setpriority": "PRIO_PROCESS with who 0 (the caller)",
    "ioprio_set": "IOPRIO_WHO_PROCESS with who 0 (the caller)",
    "sched_setaffinity, sched_setscheduler, sched_setparam, sched_setattr, "
    "migrate_pages, move_pages": "pid 0 (the caller)",
}
SELF_ONLY_WHY = (
    "EPERM",
    "no pid namespace: another pid is a host process (of the same uid, the "
    "run's monitor included), a process group or a user; checked by uid only",
)

# The network policies (``stockade.network.policy.NetworkMode``) decide the
# socket families: ``allowed_socket_families()`` there is the one list; the
# filter narrows AF_NETLINK to NETLINK_ROUTE outside permissive.
NETWORK_MODES = ("none", "loopback", "allow")

# What each argument rule allows, per mode, for the documentation; the rules
# themselves are built in seccomp.py from the constants above.
ARGUMENT_RULES: dict[str, dict[str, str]] = {
    "clone": {
        STRICT: "threads only (CLONE_THREAD) and no namespace flags",
        MODERATE: "without namespace flags (CLONE_NEW*)",
        PERMISSIVE: "without namespace flags (CLONE_NEW*)",
    },
    "ioctl": {
        mode: "any request but " + ", ".join(IOCTL_DENIED) + " (low 32 bits compared)"
        for mode in MODES
    },
    "socket, socketpair": {
        STRICT: "never",
        MODERATE: "AF_UNIX; AF_NETLINK with NETLINK_ROUTE; AF_INET and "
        "AF_INET6 unless the network policy is none (socketpair: AF_UNIX)",
        PERMISSIVE: "AF_UNIX; AF_NETLINK; AF_INET and AF_INET6 unless the "
        "network policy is none (socketpair: AF_UNIX)",
    },
    "personality": {
        mode: "queries only (0xffffffff) and PER_LINUX" for mode in MODES
    },
    "chmod, fchmod, fchmodat, fchmodat2, creat, mkdir, mkdirat, mknod, "
    "mknodat, open, openat": {
        mode: "without the set-user-ID and set-group-ID bits (open and openat: "
        "any mode unless O_CREAT or O_TMPFILE)"
        for mode in MODES
    },
}

# Why each argument rule exists, and what a refused call gets.
ARGUMENT_RULE_WHY = {
    "clone": ("EPERM", "new namespaces, and in strict new processes"),
    "ioctl": ("EPERM", "TIOCSTI pushes input into the caller's terminal "
              "(CVE-2017-5226), TIOCLINUX can do the same; the others change "
              "the terminal beyond the run: its line discipline (TIOCSETD, "
              "N_NULL makes it unusable), controlling session (TIOCSCTTY), a "
              "hang-up (TIOCVHANGUP), console output (TIOCCONS), exclusive "
              "opens (TIOCEXCL)"),
    "socket, socketpair": ("EAFNOSUPPORT", "families outside the network "
                           "policy; AF_PACKET, AF_VSOCK, AF_BLUETOOTH... always"),
    "personality": ("EPERM", "personality flags such as READ_IMPLIES_EXEC "
                    "weaken the process's own protections"),
    "chmod, fchmod, fchmodat, fchmodat2, creat, mkdir, mkdirat, mknod, "
    "mknodat, open, openat": (
        "EPERM", "a set-user-ID file in an idmapped root-owned workspace "
        "would run as root on the host"),
}

# --- compatibility matrix -----------------------------------------------------

# What runs in which mode, as tests/test_seccomp_compat.py measures it on the
# real kernel; docs/filters.md shows this table. A cell is "runs", or
# "fails: <why> (<calls>)" where <calls> are the denials the result names.
_NO_PROCESSES = "fails: no new processes (clone/fork/vfork)"
COMPATIBILITY: dict[str, tuple[str, dict[str, str]]] = {
    "true": ("`/bin/true`", {m: "runs" for m in MODES}),
    "python": ("`python3 -c` computing and writing a file", {m: "runs" for m in MODES}),
    "sh-exec": ("`sh -c 'exec python3 ...'`", {m: "runs" for m in MODES}),
    "c-binary": ("a compiled C program (built beforehand)", {m: "runs" for m in MODES}),
    "python-tools": (
        "Python script: subprocess, threads, multiprocessing Pool/Queue/Lock/Semaphore",
        {STRICT: _NO_PROCESSES, MODERATE: "runs", PERMISSIVE: "runs"},
    ),
    "bash-pipes": (
        "bash script with pipes and command substitution",
        {STRICT: _NO_PROCESSES, MODERATE: "runs", PERMISSIVE: "runs"},
    ),
    "git": (
        "git init, add, commit, branch, checkout, merge, log, diff",
        {STRICT: _NO_PROCESSES, MODERATE: "runs", PERMISSIVE: "runs"},
    ),
    "gcc": (
        "gcc compiles and runs a C program",
        {STRICT: _NO_PROCESSES, MODERATE: "runs", PERMISSIVE: "runs"},
    ),
    "node": ("`node -e`", {m: "runs" for m in MODES}),
    "sqlite3": (
        "`sqlite3` creating, filling and querying a database",
        {m: "runs" for m in MODES},
    ),
}
