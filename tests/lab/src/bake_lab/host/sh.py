"""Running host commands for the lab: checked, logged on failure, optionally inside a namespace."""
import logging
import subprocess

log = logging.getLogger("lab")


def run(*argv: str, check: bool = True, input: str | None = None, timeout: float = 60) -> str:
    """Run argv and return its stdout; raise with stderr in the message when it fails and check is set.

    60 s default: every host command here (ip, nft, mount, cp of a layer) finishes in well under that.
    """
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        msg = f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}"
        if check:
            raise RuntimeError(msg)
        log.debug(msg)
    return proc.stdout


def in_ns(ns: str, *argv: str, check: bool = True, input: str | None = None) -> str:
    """Run argv inside the named network namespace."""
    return run("ip", "netns", "exec", ns, *argv, check=check, input=input)
