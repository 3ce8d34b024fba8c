//! The audit log's ends: `audit-verify --head` catches records removed from the
//! end of the log, which the chain alone cannot show; an app restarted on a log
//! whose tail was cut refuses to start; a bad audit path gets advice for the
//! audit log.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tower_apm::security::{AuditHead, AuditLog, Level, Security, SecurityEvent};
use tower_apm::{Apm, ConfigError, LogOutput};

const KEY: &str = "test key, from a secret store in real life";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tower-apm-audit-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn build(dir: &Path, audit: AuditLog) -> Result<Apm, ConfigError> {
    Apm::builder()
        .environment([("OTEL_TRACES_EXPORTER", "none"), ("OTEL_METRICS_EXPORTER", "none")])
        .logs(LogOutput::file(dir.join("app.log")))
        .security(Security::new().audit_log(audit))
        .build()
}

/// Runs `audit-verify` with `args`: exit code and stdout.
fn audit_verify(args: &[&str]) -> (i32, String) {
    let out = Command::new(support::example_binary("audit-verify"))
        .args(args)
        .env("TOWER_APM_AUDIT_KEY", KEY)
        .output()
        .unwrap();
    (out.status.code().unwrap(), String::from_utf8(out.stdout).unwrap())
}

#[tokio::test]
async fn a_kept_head_catches_a_cut_tail_and_a_restart_refuses_to_continue_it() {
    let dir = temp_dir("head");
    let audit = dir.join("security.audit");
    let config = AuditLog::new(&audit).key(KEY);
    let apm = build(&dir, config.clone()).unwrap();
    for i in 0..4 {
        apm.security_event(SecurityEvent::new(format!("authz_admin:{i}"), Level::Warn));
    }
    assert!(apm.flush_logs(Duration::from_secs(10)).await);
    drop(apm);

    let file = audit.to_str().unwrap();
    let (code, out) = audit_verify(&[file]);
    assert_eq!(code, 0, "{out}");
    let head = out.trim().rsplit_once("head ").unwrap().1.to_owned();
    assert!(out.starts_with("ok: 4 records, seq 0..3, head 3:"), "{out}");
    let kept: AuditHead = head.parse().unwrap();
    // The writer keeps the same head next to the log.
    let head_file = dir.join(".security.audit.head");
    assert_eq!(std::fs::read_to_string(&head_file).unwrap().trim(), head);
    let (code, out) = audit_verify(&["--head", &head, file]);
    assert_eq!(
        (code, out.trim()),
        (
            0,
            format!("ok: 4 records, seq 0..3, head {head}; kept head {head} found").as_str()
        )
    );

    // The newest two records removed at a line boundary.
    let text = std::fs::read_to_string(&audit).unwrap();
    let kept_lines: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&audit, &kept_lines).unwrap();
    let (code, out) = audit_verify(&[file]);
    assert_eq!(code, 0, "the chain alone cannot show it: {out}");
    let (code, out) = audit_verify(&["--head", &head, file]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        out.trim(),
        format!(
            "{file}: the chain ends at seq 1, before the kept head at seq 3: records were removed from its end \
             (or the newest files are missing)"
        )
    );

    // The app restarts on the cut log: it refuses, and writes nothing.
    let err = build(&dir, config.clone()).unwrap_err();
    assert!(
        matches!(&err, ConfigError::AuditChain { path, .. } if path == file),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("last record is seq 1") && msg.contains("seq 3") && msg.contains("audit-verify --head"),
        "{msg}"
    );
    assert_eq!(std::fs::read_to_string(&audit).unwrap(), kept_lines);
    // Without the head file, a head given by the user catches it all the same.
    std::fs::remove_file(&head_file).unwrap();
    let err = build(&dir, config.clone().expect_head(kept.clone())).unwrap_err();
    assert!(err.to_string().contains("AuditLog::expect_head"), "{err}");

    let (code, _) = audit_verify(&["--head", "3", file]);
    assert_eq!(code, 2, "a head that is not SEQ:MAC");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bad_audit_path_gets_advice_for_the_audit_log() {
    let dir = temp_dir("badpath");
    let err = build(&dir, AuditLog::new(dir.join("missing/dir/security.audit"))).unwrap_err();
    assert!(matches!(err, ConfigError::AuditFile { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("audit log") && msg.contains("missing/dir/security.audit"),
        "{msg}"
    );
    assert!(!msg.contains("stdout"), "the audit log cannot go to stdout: {msg}");
    let _ = std::fs::remove_dir_all(dir);
}
