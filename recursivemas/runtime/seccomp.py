"""The sandbox's seccomp filter: system calls that model-written code never needs and an attacker does.

Namespaces hide the server's files, processes and network, but the sandbox still shares one kernel with the
server, and some kernel state is not namespaced: the session keyring (``keyctl`` reads and overwrites the keys of
the process that started the run, and leaves keys for the next run), anonymous memory files (``memfd_create``
fills memory no address-space limit counts), new user namespaces, ``io_uring``, ``ptrace``, ``bpf``, perf events
and the mount API. bubblewrap loads a classic-BPF program from a file descriptor (``--seccomp FD``) right before
it executes the command; this module writes that program, with no libseccomp needed.

Refused calls fail with ``EPERM`` (``clone3`` with ``ENOSYS``, so the C library falls back to ``clone``, whose
flags the filter can read: ``clone`` is refused only with a namespace flag). A program for another architecture,
or the x32 ABI on x86-64, is refused as a whole, since its system call numbers differ.
"""

from __future__ import annotations

import errno
import platform
import struct

__all__ = ["DENIED", "filter_program", "supported"]

# name -> (x86-64, aarch64) system call numbers, from the kernel's unistd headers
_NUMBERS: dict[str, tuple[int, int | None]] = {
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "unshare": (272, 97), "setns": (308, 268),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442),
    "memfd_create": (319, 279), "memfd_secret": (447, 447),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142), "acct": (163, 89), "quotactl": (179, 60),
    "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265), "pidfd_getfd": (438, 438),
    "fanotify_init": (300, 262), "lookup_dcookie": (212, 18), "iopl": (172, None), "ioperm": (173, None),
}
DENIED: tuple[str, ...] = tuple(_NUMBERS)
_CLONE, _CLONE3 = (56, 220), (435, 435)
_CLONE_NAMESPACES = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # machine -> (column, AUDIT_ARCH_*)
_X32_BIT = 0x40000000

# classic BPF: struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}, over struct seccomp_data {int nr; u32 arch; ...}
_LD_ABS, _JEQ, _JSET, _JGE, _RET = 0x20, 0x15, 0x45, 0x35, 0x06
_NR, _ARCH, _ARG0 = 0, 4, 16
_ALLOW, _KILL_PROCESS = 0x7FFF0000, 0x80000000


def _errno(code: int) -> int:
    return 0x00050000 | code  # SECCOMP_RET_ERRNO


def supported(machine: str | None = None) -> bool:
    return (machine or platform.machine()) in _ARCHES


def filter_program(machine: str | None = None) -> bytes:
    """The filter as bwrap reads it (an array of ``sock_filter``), for ``machine`` (default: this one)."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise ValueError(f"no seccomp filter for {machine!r}; supported: {sorted(_ARCHES)}")
    column, arch = _ARCHES[machine]
    code: list[tuple[int, int, int, int]] = [
        (_LD_ABS, 0, 0, _ARCH), (_JEQ, 1, 0, arch), (_RET, 0, 0, _KILL_PROCESS), (_LD_ABS, 0, 0, _NR)]
    if machine == "x86_64":  # the x32 ABI numbers its calls differently: refuse it as a whole
        code += [(_JGE, 0, 1, _X32_BIT), (_RET, 0, 0, _errno(errno.EPERM))]
    for numbers in _NUMBERS.values():
        if numbers[column] is not None:
            code += [(_JEQ, 0, 1, numbers[column]), (_RET, 0, 0, _errno(errno.EPERM))]
    code += [(_JEQ, 0, 1, _CLONE3[column]), (_RET, 0, 0, _errno(errno.ENOSYS)),
             (_JEQ, 0, 3, _CLONE[column]), (_LD_ABS, 0, 0, _ARG0),  # clone's flags: the low word of args[0]
             (_JSET, 0, 1, _CLONE_NAMESPACES), (_RET, 0, 0, _errno(errno.EPERM)),
             (_RET, 0, 0, _ALLOW)]
    return b"".join(struct.pack("<HBBI", *instruction) for instruction in code)
