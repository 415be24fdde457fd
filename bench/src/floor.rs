//! The floor under a broadcast: what this machine takes to write one
//! 64-byte message to each of N connected TCP sockets and have the last
//! reader get it, with no master, no HTTP/2 and no protobuf. The broadcast
//! rows of `members` read as a ratio to it. The readers are another
//! process (this binary again), as the members are another process than
//! the master.

use crate::{now_ns, percentile, spawn_self, us};
use anyhow::Context;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Rounds timed, as the broadcast rows.
const ROUNDS: u32 = 20;
/// One message: the send time (ns, 16 bytes), the round (4), padding.
const MESSAGE: usize = 64;

/// The writer's side: `n` sockets accepted from the readers' process, one
/// message each per round; the row of the table.
pub async fn row(n: usize) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let mut readers = spawn_self(&["floor-readers", &addr, &n.to_string()])?;
    let mut report = BufReader::new(readers.0.stdout.take().context("readers' stdout")?).lines();
    let mut sockets = Vec::with_capacity(n);
    while sockets.len() < n {
        let (s, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept())
            .await
            .context("the readers connect")??;
        s.set_nodelay(true)?;
        sockets.push(s);
    }
    let mut worst = Vec::new();
    for round in 0..ROUNDS {
        let mut message = [0u8; MESSAGE];
        message[..16].copy_from_slice(&now_ns().to_le_bytes());
        message[16..20].copy_from_slice(&round.to_le_bytes());
        for s in &mut sockets {
            s.write_all(&message).await?;
        }
        // The readers' process says when the last of them had it.
        let line = tokio::task::block_in_place(|| report.next()).context("the readers ended")??;
        let ns: u64 = line.trim().parse()?;
        worst.push(Duration::from_nanos(ns));
    }
    drop(readers);
    worst.sort();
    Ok(format!(
        "| floor: 64 B written to each of {n} TCP sockets, until the last reader has it (no master) | {} / {} |\n",
        us(percentile(&worst, 0.5)),
        us(percentile(&worst, 0.99))
    ))
}

/// The readers' process: `n` connections to `addr`; for each round, one
/// line on stdout once all have it: the worst latency in ns.
pub fn readers(addr: &str, n: usize) -> anyhow::Result<()> {
    cohort_process::raise_open_files()?;
    crate::runtime()?.block_on(async move {
        let rounds: Arc<Mutex<HashMap<u32, (usize, u64)>>> = Arc::default();
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            let rounds = rounds.clone();
            tasks.push(tokio::spawn(async move {
                let mut message = [0u8; MESSAGE];
                while s.read_exact(&mut message).await.is_ok() {
                    let got = now_ns();
                    let mut sent = [0u8; 16];
                    sent.copy_from_slice(&message[..16]);
                    let mut round = [0u8; 4];
                    round.copy_from_slice(&message[16..20]);
                    let took = got.saturating_sub(u128::from_le_bytes(sent));
                    let round = u32::from_le_bytes(round);
                    let mut all = rounds.lock().unwrap_or_else(|p| p.into_inner());
                    let entry = all.entry(round).or_insert((0, 0));
                    entry.0 += 1;
                    entry.1 = entry.1.max(u64::try_from(took).unwrap_or(u64::MAX));
                    if entry.0 == n {
                        let worst = entry.1;
                        all.remove(&round);
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{worst}");
                        let _ = out.flush();
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(())
    })
}
