//! Checks a tower-apm audit log: that no record in it was edited, inserted,
//! moved, cut short or deleted from the middle since it was written, and, with
//! `--head`, that no record was removed from its end.
//!
//! Run it with the log's files, current and rotated, in any order:
//!
//! ```text
//! cargo run --example audit-verify -- --key-file /etc/checkout/audit.key \
//!     --head 41:3f9a...e2 /var/log/checkout/security.audit*
//! ```
//!
//! The key is the one the app gives `AuditLog::key`: the key file's bytes less
//! one final newline (so `echo secret > audit.key` works), or, without
//! `--key-file`, the `TOWER_APM_AUDIT_KEY` environment variable. A log written
//! without a key is checked without one.
//!
//! `--head SEQ:MAC` is a head printed by an earlier run and kept where the
//! app's host cannot change it (another host, a ticket, a log service): the
//! chain must still hold that record. Without it, records removed from the end
//! of the log, the newest files or the whole log deleted cannot be seen (the
//! records left still form a chain); nor, with or without it, the oldest files
//! deleted (the first record given is trusted as the start).
//!
//! When the chain holds, it prints `ok: N records, seq A..B, head B:MAC` (and
//! `kept head SEQ:MAC found` with `--head`) and exits 0: keep the new head for
//! the next run. When it is broken, it prints the first broken record (file,
//! line, seq and what is wrong), or that the chain does not reach the kept
//! head, and exits 1. Bad arguments or an unreadable file: exit 2.

use std::path::PathBuf;
use std::process::ExitCode;

use tower_apm::security::{AuditHead, BreakKind, verify_audit_log, verify_audit_log_with_head};

const USAGE: &str = "usage: audit-verify [--key-file PATH] [--head SEQ:MAC] FILE...";

fn main() -> ExitCode {
    let mut key_file = None;
    let mut head: Option<AuditHead> = None;
    let mut files = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--key-file" {
            match args.next() {
                Some(path) => key_file = Some(PathBuf::from(path)),
                None => return usage("--key-file needs a path"),
            }
        } else if arg == "--head" {
            match args.next().map(|h| h.to_string_lossy().parse::<AuditHead>()) {
                Some(Ok(h)) => head = Some(h),
                Some(Err(e)) => return usage(&format!("--head: {e}")),
                None => return usage("--head needs SEQ:MAC"),
            }
        } else if arg.to_string_lossy().starts_with('-') {
            return usage(&format!("unknown option {}", arg.to_string_lossy()));
        } else {
            files.push(PathBuf::from(arg));
        }
    }
    if files.is_empty() {
        return usage("no files to check");
    }

    let key = match key_file {
        Some(path) => match std::fs::read(&path) {
            Ok(mut key) => {
                if key.ends_with(b"\n") {
                    key.pop();
                    if key.ends_with(b"\r") {
                        key.pop();
                    }
                }
                Some(key)
            }
            Err(e) => return usage(&format!("cannot read the key file {}: {e}", path.display())),
        },
        None => std::env::var("TOWER_APM_AUDIT_KEY")
            .ok()
            .filter(|k| !k.is_empty())
            .map(String::into_bytes),
    };

    let verified = match &head {
        Some(head) => verify_audit_log_with_head(&files, key.as_deref(), head),
        None => verify_audit_log(&files, key.as_deref()),
    };
    match verified {
        Ok(v) => {
            print!(
                "ok: {} records, seq {}..{}, head {}",
                v.records,
                v.first_seq,
                v.last_seq,
                v.to_head()
            );
            match head {
                Some(head) => println!("; kept head {head} found"),
                None => println!(),
            }
            ExitCode::SUCCESS
        }
        Err(broken) if matches!(broken.kind, BreakKind::Unreadable { .. }) => usage(&broken.to_string()),
        Err(broken) => {
            println!("{broken}");
            ExitCode::from(1)
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("audit-verify: {problem}\n{USAGE}");
    ExitCode::from(2)
}
