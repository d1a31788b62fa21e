"""The syscall filter of every sandboxed program: a seccomp program compiled by libseccomp
(through ``pyseccomp``) and loaded by bubblewrap (``bwrap --seccomp FD``) just before the program
starts. Nothing here is hand-written BPF.

Anchored on Docker's default profile: what it refuses to a container without capabilities is
refused here too (EPERM), and a few more that generated code never needs. Everything else is
allowed. ``DENIED`` lists them by group; besides:
  * ``keyctl`` is refused except ``keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)``, which the
    sandbox's start-up (``wire.confine``) uses to give the run a fresh, empty session keyring;
  * ``clone`` is refused with any ``CLONE_NEW*`` flag (a new namespace); ``clone3`` gets ENOSYS,
    as under Docker: its flags sit behind a pointer that seccomp cannot read, and libc falls back
    to ``clone`` on ENOSYS;
  * ``socket(AF_VSOCK)`` is refused (host sockets outside the network namespace);
  * with ``bounded_files`` (runs without a memory cgroup): ``memfd_create``, ``memfd_secret`` and
    ``shmget`` too, so that memory held in files stays within the sized tmpfs mounts.
Syscalls that do not exist on this architecture are skipped; other architectures' syscall ABIs
(i386 and x32 on x86_64) are killed by libseccomp's bad-architecture action.
"""

from __future__ import annotations

import errno
import functools
import tempfile

DENIED: dict[str, tuple[str, ...]] = {
    "kernel keyrings": ("add_key", "request_key"),
    "namespaces": ("unshare", "setns"),
    "mounts": (
        "mount",
        "umount",
        "umount2",
        "pivot_root",
        "chroot",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "open_tree",
        "move_mount",
        "mount_setattr",
    ),
    "tracing and other processes' memory": (
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "process_madvise",
        "kcmp",
        "pidfd_getfd",
        "perf_event_open",
        "bpf",
        "userfaultfd",
        "lookup_dcookie",
        "fanotify_init",
        "syslog",
    ),
    "kernel and system administration": (
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "create_module",
        "query_module",
        "get_kernel_syms",
        "reboot",
        "swapon",
        "swapoff",
        "acct",
        "quotactl",
        "quotactl_fd",
        "settimeofday",
        "stime",
        "clock_settime",
        "sethostname",
        "setdomainname",
        "iopl",
        "ioperm",
        "vhangup",
        "uselib",
        "nfsservctl",
        "_sysctl",
        "sysfs",
        "ustat",
        "vm86",
        "vm86old",
        "open_by_handle_at",
    ),
    "NUMA policy": (
        "get_mempolicy",
        "set_mempolicy",
        "set_mempolicy_home_node",
        "mbind",
        "move_pages",
        "migrate_pages",
    ),
    "io_uring": ("io_uring_setup", "io_uring_enter", "io_uring_register"),
}
BOUNDED_FILES_DENIED = ("memfd_create", "memfd_secret", "shmget")
KEYCTL_JOIN_SESSION_KEYRING = 1
CLONE_NEW_FLAGS = {  # <linux/sched.h>
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
AF_VSOCK = 40
_AUDIT_ARCH_S390 = (0x16, 0x80000016)  # clone's flags are its second argument there


class FilterUnavailable(RuntimeError):
    """libseccomp (or its Python binding) is missing; the message is one line."""


def _libseccomp():
    try:
        import pyseccomp  # a ctypes binding: needs the system's libseccomp.so.2
    except (ImportError, RuntimeError, OSError) as e:
        raise FilterUnavailable(
            f"cannot compile the syscall filter ({type(e).__name__}: {e}); install the "
            "pyseccomp package and libseccomp2 (apt-get install libseccomp2)"
        ) from None
    return pyseccomp


def syscall_number(name: str) -> int:
    """This architecture's number of syscall ``name`` (negative if it has none)."""
    sc = _libseccomp()
    return sc.resolve_syscall(sc.Arch.NATIVE, name)


@functools.cache
def program(bounded_files: bool) -> bytes:
    """The compiled filter (a BPF program, as ``bwrap --seccomp`` reads it)."""
    sc = _libseccomp()
    deny = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)
    names = [n for group in DENIED.values() for n in group]
    if bounded_files:
        names += BOUNDED_FILES_DENIED
    for name in names:
        nr = sc.resolve_syscall(sc.Arch.NATIVE, name)
        if nr != -1:  # -1: unknown to libseccomp; other negatives: absent here (ignored by it)
            f.add_rule(deny, nr)
    f.add_rule(deny, "keyctl", sc.Arg(0, sc.NE, KEYCTL_JOIN_SESSION_KEYRING))
    f.add_rule(deny, "keyctl", sc.Arg(0, sc.EQ, KEYCTL_JOIN_SESSION_KEYRING), sc.Arg(1, sc.NE, 0))
    flags_arg = 1 if sc.system_arch() in _AUDIT_ARCH_S390 else 0
    for flag in CLONE_NEW_FLAGS.values():
        f.add_rule(deny, "clone", sc.Arg(flags_arg, sc.MASKED_EQ, flag, flag))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(deny, "socket", sc.Arg(0, sc.EQ, AF_VSOCK))
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()
