"""Exception types shared by the whole package.

Every error a user can cause or meet derives from ProviumError and carries a
message fit to print on one line.
"""


class ProviumError(Exception):
    """Base of all errors that Provium reports to the user."""


class ConfigError(ProviumError):
    """provium.toml, a profile or a host artifact is wrong (exit status 2)."""


class ImageError(ProviumError):
    """A kernel, initramfs or the agent could not be prepared."""


class QemuError(ProviumError):
    """QEMU could not be started or died. command: its command line; exit_code: its exit status (None while
    it runs or before it started); stderr: the tail of what it printed ("" when nothing)."""

    def __init__(self, message, *, command=(), exit_code=None, stderr=""):
        super().__init__(message)
        self.command, self.exit_code, self.stderr = tuple(command), exit_code, stderr


class BootError(ProviumError):
    """The guest did not become ready; carries the console tail."""


class ProtocolError(ProviumError):
    """The agent sent something the protocol does not allow."""


class AgentError(ProviumError):
    """An op failed inside the guest (the agent's error reply)."""

    def __init__(self, message, errno=None):
        super().__init__(message)
        self.errno = errno


class ArgumentError(ProviumError):
    """A wrong argument to an op, refused before anything runs (a test file sees the method's name with it)."""


class DeadlineError(ProviumError):
    """A wait ran out of time."""


class VmStateError(ProviumError):
    """An operation on a VM that is not running."""
