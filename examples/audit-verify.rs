//! Checks a tower-apm audit log: that no record in it was edited, deleted,
//! inserted, moved or cut short since it was written.
//!
//! Run it with the log's files, current and rotated, in any order:
//!
//! ```text
//! cargo run --example audit-verify -- --key-file /etc/checkout/audit.key /var/log/checkout/security.audit*
//! ```
//!
//! The key is the one the app gives `AuditLog::key`: the key file's bytes less
//! one final newline (so `echo secret > audit.key` works), or, without
//! `--key-file`, the `TOWER_APM_AUDIT_KEY` environment variable. A log written
//! without a key is checked without one.
//!
//! When the chain holds, it prints `ok: N records, seq A..B, head <mac>` and
//! exits 0. Keep the head somewhere the app's host cannot change: the files
//! alone cannot show records removed from the end, or the oldest files deleted.
//! When it is broken, it prints the first broken record (file, line, seq and
//! what is wrong) and exits 1. Bad arguments or an unreadable file: exit 2.

use std::path::PathBuf;
use std::process::ExitCode;

use tower_apm::security::{BreakKind, verify_audit_log};

const USAGE: &str = "usage: audit-verify [--key-file PATH] FILE...";

fn main() -> ExitCode {
    let mut key_file = None;
    let mut files = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--key-file" {
            match args.next() {
                Some(path) => key_file = Some(PathBuf::from(path)),
                None => return usage("--key-file needs a path"),
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

    match verify_audit_log(&files, key.as_deref()) {
        Ok(v) => {
            println!(
                "ok: {} records, seq {}..{}, head {}",
                v.records, v.first_seq, v.last_seq, v.head
            );
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
