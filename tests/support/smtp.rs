//! Test support: a real SMTP server, `aiosmtpd` from Debian's `python3-aiosmtpd`
//! (`.ci/interop-setup` installs it and names its Python in
//! `TOWER_APM_SMTPD_PYTHON`), run with its debugging handler, which prints every
//! message it receives. Include it with `#[path = "support/smtp.rs"] mod smtp;`.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// A running SMTP server; its messages arrive on [`SmtpServer::next_message`].
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    messages: mpsc::UnboundedReceiver<String>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpServer {
    /// Starts the server on a free loopback port and waits until it accepts
    /// connections.
    pub async fn start() -> SmtpServer {
        let python = std::env::var("TOWER_APM_SMTPD_PYTHON")
            .expect("TOWER_APM_SMTPD_PYTHON: run .ci/interop-setup and source target/interop/env");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(python)
            .args(["-u", "-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let stdout = child.stdout.take().unwrap();
        let (tx, messages) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut message = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("---------- MESSAGE FOLLOWS") {
                    message.clear();
                } else if line.starts_with("------------ END MESSAGE") {
                    let _ = tx.send(std::mem::take(&mut message));
                } else {
                    message.push_str(&line);
                    message.push('\n');
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd does not accept connections");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        SmtpServer { child, port, messages }
    }

    /// The next message whose text contains `needle` (headers and body), within 30 s.
    pub async fn next_message(&mut self, needle: &str) -> String {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let m = self.messages.recv().await.expect("aiosmtpd runs");
                if m.contains(needle) {
                    return m;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no email containing {needle:?} within 30 s"))
    }
}
