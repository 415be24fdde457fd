//! HTTP/1.1 as a test client speaks it (minreq): one request, and a load
//! of them in a loop.

use std::time::{Duration, Instant};

/// One HTTP/1.1 request on a fresh connection; returns the status and body.
pub fn http(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let method = match method {
        "GET" => minreq::Method::Get,
        "POST" => minreq::Method::Post,
        other => minreq::Method::Custom(other.to_string()),
    };
    let response = minreq::Request::new(method, format!("http://{addr}{path}"))
        .with_timeout(10)
        .send()
        .map_err(std::io::Error::other)?;
    let body = response
        .as_str()
        .map_err(std::io::Error::other)?
        .to_string();
    Ok((response.status_code, body))
}

/// A client loop of HTTP GETs on its own thread, bounded in time.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u32, Vec<String>)>>,
}

impl Load {
    /// Starts GETting `http://addr/` in a loop (at most 60 s).
    pub fn start(addr: &str) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, addr) = (stop.clone(), addr.to_string());
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failures) = (0u32, Vec::new());
            let end = Instant::now() + Duration::from_secs(60);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                match http(&addr, "GET", "/") {
                    Ok((200, _)) => ok += 1,
                    Ok((code, body)) => failures.push(format!("{code} {body}")),
                    Err(e) => failures.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (ok, failures)
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the loop; returns (successful requests, failures).
    pub fn stop(mut self) -> (u32, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
