//! The quick start cannot rot: the README's snippet, the crate docs' (a doc test
//! that compiles) and `examples/quickstart.rs` are one text, and that example,
//! run as a real process, serves a request, takes a real SIGTERM, delivers the
//! request's span to a collector and exits 0.

mod support;

use std::process::Command;

use support::{JsonProcess, Receiver, example_binary, get};

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The lines of the first fenced block opening with `fence` after `after`.
fn fenced(text: &str, after: &str, fence: &str) -> String {
    let from = text.find(after).unwrap_or_else(|| panic!("no {after:?}"));
    let mut lines = text[from..].lines().skip_while(|l| l.trim() != fence);
    assert!(lines.next().is_some(), "no {fence} block after {after:?}");
    lines.take_while(|l| l.trim() != "```").collect::<Vec<_>>().join("\n")
}

/// The three copies, as the reader sees each.
fn copies() -> [(&'static str, String); 3] {
    let readme = fenced(&read("README.md"), "The quick start", "```rust");
    let lib = read("src/lib.rs");
    let docs: Vec<&str> = lib
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.strip_prefix("//! ").unwrap_or(l.trim_start_matches("//!")))
        .collect();
    let docs = fenced(&docs.join("\n"), "## Quick start", "```no_run");
    // The example: everything after its `//!` header and the blank line.
    let example = read("examples/quickstart.rs");
    let body: Vec<&str> = example.lines().skip_while(|l| l.starts_with("//!")).skip(1).collect();
    [
        ("README.md", readme),
        ("src/lib.rs (Quick start)", docs),
        ("examples/quickstart.rs", body.join("\n")),
    ]
}

#[test]
fn the_readme_the_crate_docs_and_the_example_show_one_quick_start() {
    let [(_, readme), (_, docs), (_, example)] = copies();
    assert!(
        example.contains("with_graceful_shutdown(shutdown.signal())")
            && example.contains("into_make_service_with_connect_info::<SocketAddr>()")
            && example.contains("Ok(shutdown.finish(&apm).await)"),
        "the example is the whole start path:\n{example}"
    );
    for (name, text) in [("README.md", &readme), ("src/lib.rs (Quick start)", &docs)] {
        if *text != example {
            let line = text
                .lines()
                .zip(example.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| text.lines().count().min(example.lines().count()));
            panic!(
                "{name} differs from examples/quickstart.rs at line {} of the snippet:\n  {name}: {:?}\n  example: {:?}",
                line + 1,
                text.lines().nth(line),
                example.lines().nth(line)
            );
        }
    }
}

/// The example, running, with its stdout lines arriving as JSON values.
fn start_quickstart(env: &[(&str, &str)]) -> JsonProcess {
    let mut cmd = Command::new(example_binary("quickstart"));
    cmd.env("LISTEN_ADDR", "127.0.0.1:0").env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    JsonProcess::spawn(cmd)
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_delivers_the_span_on_sigterm_and_exits_0() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.grpc_endpoint();
    let mut app = start_quickstart(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Nothing leaves before the SIGTERM: only the shutdown's flush can
        // deliver the span.
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "60000"),
    ]);
    let listening = app.wait_line(|l| l["message"] == "listening").await;
    let base = listening["url"].as_str().unwrap().to_owned();

    let (status, body) = get(format!("{base}/users/7")).await;
    assert_eq!((status, body.as_str()), (200, "user 7\n"));
    let access = app.wait_line(|l| l["target"] == "tower_apm::access").await;
    assert_eq!(access["route"], "/users/{id}");
    assert_eq!(access["client_address"], "127.0.0.1", "the peer's address: {access}");
    assert!(receiver.spans().is_empty(), "spans wait for the flush");

    app.sigterm();
    let (code, stderr, lines) = app.exit().await;
    assert_eq!(code, Some(0), "a clean shutdown exits 0; stderr: {stderr}; {lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l["phase"] == "flush" && l["message"] == "telemetry flushed"),
        "{lines:#?}"
    );

    // Delivered before the exit: already there, no waiting needed beyond it.
    let spans = receiver.spans();
    let span = spans
        .iter()
        .find(|s| s.span.name == "GET /users/{id}")
        .unwrap_or_else(|| panic!("the request's span reached the collector: {spans:#?}"));
    assert_eq!(span.trace_id_hex(), access["trace_id"].as_str().unwrap());
    assert_eq!(span.str_attr("client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(span.resource_attr("service.name").as_deref(), Some("checkout"));
    assert!(!receiver.metric_exports().is_empty(), "the last metric push");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_prints_what_to_fix_and_exits_1_on_a_bad_variable() {
    let app = start_quickstart(&[
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "half"),
    ]);
    let (code, stderr, lines) = app.exit().await;
    assert_eq!(code, Some(1), "{lines:#?}");
    assert!(
        stderr.starts_with("checkout: invalid value \"half\" for OTEL_TRACES_SAMPLER_ARG: expected"),
        "the Display of the ConfigError, not its fields: {stderr}"
    );
}
