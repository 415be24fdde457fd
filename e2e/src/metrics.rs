//! Reading the master's Prometheus metrics (`--metrics-listen`).

use crate::{Master, http};

/// The value of the series `name{labels…}` in an exposition, if present.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `GET /metrics` from `addr`.
pub fn scrape(addr: &str) -> String {
    let (code, body) = http(addr, "GET", "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// The metrics address a master started with `--metrics-listen` printed.
pub fn address(master: &mut Master) -> String {
    let line = master
        .proc
        .wait_line("READY metrics", |l| l.starts_with("READY metrics "));
    line.trim_start_matches("READY metrics ").to_string()
}
