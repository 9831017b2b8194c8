"""``ciflow emulate-github``: serve the emulator, printing a job's ``export`` lines."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path

from .model import FAULT_KINDS, Faults
from .service import GitHubEmulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ciflow emulate-github",
        description="Emulate GitHub Actions' artifact (v4) and cache (v2) services locally.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--run-id", default="local-run")
    parser.add_argument(
        "--job-id",
        action="append",
        default=None,
        help="job id (repeatable: tokens for more jobs are printed as comments)",
    )
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument(
        "--fault-kinds",
        default="503",
        help=f"comma-separated subset of {','.join(sorted(FAULT_KINDS))}",
    )
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--fault-blobs", action="store_true", help="faults hit blob requests too")
    parser.add_argument("--retry-after", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--default-branch", default="main", help="the repository's default branch")
    parser.add_argument("--ref", default=None, help="the jobs' branch or ref (default: default)")
    parser.add_argument("--base-ref", default=None, help="a pull request's base branch")
    parser.add_argument(
        "--require-restore-keys",
        action="store_true",
        help="cache lookups without restore_keys miss, even an exact key",
    )
    _artifact_options(parser)
    return parser


def _artifact_options(parser: argparse.ArgumentParser) -> None:
    """The artifact service's undocumented behaviours (`GitHubEmulator` attributes)."""
    group = parser.add_argument_group("artifact service behaviours")
    group.add_argument(
        "--unfinalized-frees-name", action="store_true",
        help="an artifact not yet finalized does not hold its name (default: it does)",
    )  # fmt: skip
    group.add_argument(
        "--unfinalized-undeletable", action="store_true",
        help="DeleteArtifact cannot remove an artifact that was never finalized",
    )  # fmt: skip
    group.add_argument(
        "--unfinalized-listed", action="store_true",
        help="ListArtifacts shows artifacts that are not finalized (size 0)",
    )  # fmt: skip
    group.add_argument(
        "--list-limit", type=int, default=None, metavar="N",
        help="an unfiltered ListArtifacts answers only the newest N artifacts",
    )  # fmt: skip
    group.add_argument(
        "--artifacts-across-attempts", action="store_true",
        help="jobs of a re-run attempt also see the artifacts of earlier attempts",
    )  # fmt: skip
    group.add_argument(
        "--artifact-limit", type=int, default=None, metavar="N",
        help="artifacts a job may create, deleted ones included (default 500)",
    )  # fmt: skip
    group.add_argument(
        "--storage-quota-hit", action="store_true",
        help="CreateArtifact answers that the artifact storage quota is used up",
    )  # fmt: skip


def _configure(emulator: GitHubEmulator, args: argparse.Namespace) -> None:
    """Set the emulator's behaviours from the command line."""
    emulator.require_restore_keys = args.require_restore_keys
    emulator.unfinalized_reserves_name = not args.unfinalized_frees_name
    emulator.unfinalized_deletable = not args.unfinalized_undeletable
    emulator.unfinalized_listed = args.unfinalized_listed
    if args.list_limit is not None and args.list_limit < 0:
        raise ValueError("--list-limit must be 0 or more")
    emulator.list_limit = args.list_limit
    emulator.artifacts_across_attempts = args.artifacts_across_attempts
    if args.artifact_limit is not None:
        emulator.artifact_limit = args.artifact_limit
    emulator.storage_quota_hit = args.storage_quota_hit


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_exports(emulator: GitHubEmulator, args: argparse.Namespace, jobs: list[str]) -> None:
    run_id, refs = args.run_id, {"ref": args.ref, "base_ref": args.base_ref}
    for name, value in emulator.env(run_id, jobs[0], **refs).items():
        print(f"export {name}={shlex.quote(value)}")
    for job in jobs[1:]:
        other = emulator.env(run_id, job, **refs)
        print(
            f"# job {job}: export ACTIONS_RUNTIME_TOKEN="
            f"{shlex.quote(other['ACTIONS_RUNTIME_TOKEN'])} "
            f"CIFLOW_JOB_ID={other['CIFLOW_JOB_ID']} GITHUB_JOB={shlex.quote(job)}"
        )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Serve the emulator until Ctrl-C, SIGTERM or SIGHUP (its folder is removed then),
    printing ``export`` lines for a job's environment."""
    args = _parser().parse_args(argv)
    jobs = args.job_id or ["local-job"]
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    emulator: GitHubEmulator | None = None
    try:
        faults = Faults(
            rate=args.fault_rate,
            latency=args.latency,
            seed=args.fault_seed,
            kinds=[k.strip() for k in args.fault_kinds.split(",") if k.strip()],
            retry_after=args.retry_after,
            blobs=args.fault_blobs,
        )
        emulator = GitHubEmulator(
            args.host, args.port, data_dir=args.data_dir, default_branch=args.default_branch
        )
        emulator.faults = faults
        _configure(emulator, args)
        emulator.start()
        _print_exports(emulator, args, jobs)
        print(f"# serving {emulator.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass  # a stop signal may land anywhere above, even while the exports are printed
    finally:
        if emulator is not None:
            emulator.stop()
    return 0
